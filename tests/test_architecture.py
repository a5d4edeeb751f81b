"""The import direction of the design card, enforced: bounds <- train <- landscape; figures reads
only the HDF5 store; the CLI and reproduce are the only places that wire everything together."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bounds", "train", "landscape", "figures")

# package -> toolkit packages it may import (module-level or lazily)
ALLOWED = {
    "bounds": set(),
    "train": {"bounds"},
    "landscape": {"bounds", "train"},
    "figures": {"landscape.store"},
}
COMPOSITION_ROOTS = {"landscape/cli.py", "landscape/cmd_plot.py", "landscape/reproduce.py"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _toolkit_targets(names: set[str]) -> set[str]:
    return {n for n in names if n.split(".")[0] in PACKAGES}


@pytest.mark.parametrize("package", PACKAGES)
def test_import_direction(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel in COMPOSITION_ROOTS:
            continue
        for target in _toolkit_targets(_imports(path)):
            top = target.split(".")[0]
            if top == package:
                continue
            allowed = ALLOWED[package]
            if top in allowed or any(target == a or target.startswith(a + ".") for a in allowed):
                continue
            if package == "figures" and target == "landscape":  # `from landscape import store`
                continue
            bad.append(f"{rel} imports {target}")
    assert not bad, "imports against the design card's direction:\n" + "\n".join(bad)


def test_landscape_init_is_import_free() -> None:
    tree = ast.parse((ROOT / "landscape" / "__init__.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_store_and_figures_do_not_load_torch() -> None:
    code = "import sys; from landscape import store; import figures; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
