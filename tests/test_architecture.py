"""The layout, enforced: imports run one way (common <- bounds <- train <- landscape; figures
reads only the ground floor ``common``: the store and the name table), the store is a leaf, no
module reaches into another's private names, every name table has one definition, no module is
over 300 statements, and no docstring points outside the repository."""

from __future__ import annotations

import ast
import subprocess
import sys
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "bounds", "train", "landscape", "figures")
# statements (logical lines), not physical ones: the formatter wraps a long call over many lines
# without making the module any bigger a job
MAX_STATEMENTS = 300

# package -> toolkit modules it may import (module-level or lazily); a prefix allows its submodules
ALLOWED = {
    "common": set(),
    "bounds": {"common"},
    "train": {"common", "bounds"},
    "landscape": {"common", "bounds", "train"},
    "figures": {"common"},
}


def _is_composition_root(rel: str) -> bool:
    """The command modules and ``reproduce`` wire train, landscape and figures together."""
    return (
        rel in ("landscape/cli.py",)
        or rel.startswith("landscape/cmd_")
        or rel.startswith("landscape/reproduce/")
    )


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _all_modules() -> list[Path]:
    return [p for pkg in PACKAGES for p in _modules(pkg)]


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


def _allowed(target: str, allowed: set[str]) -> bool:
    return any(target == a or target.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("package", PACKAGES)
def test_import_direction(package: str) -> None:
    bad = []
    for path in _modules(package):
        rel = path.relative_to(ROOT).as_posix()
        for target in _toolkit_targets(_imports(path)):
            top = target.split(".")[0]
            if top == package:
                continue
            if _is_composition_root(rel) and top == "figures":
                continue
            if top in ALLOWED[package] or _allowed(target, ALLOWED[package]):
                continue
            bad.append(f"{rel} imports {target}")
    assert not bad, "imports against the design card's direction:\n" + "\n".join(bad)


def test_only_composition_roots_import_figures() -> None:
    bad = [
        f"{p.relative_to(ROOT)}"
        for p in _modules("landscape")
        if not _is_composition_root(p.relative_to(ROOT).as_posix())
        and any(t.split(".")[0] == "figures" for t in _imports(p))
    ]
    assert not bad, "only cli, cmd_* and reproduce may import figures:\n" + "\n".join(bad)


def test_figures_never_import_the_torch_half_of_common() -> None:
    """``common.tensors`` needs torch; ``figures`` reads HDF5 files and must never need it."""
    bad = [
        f"{p.relative_to(ROOT)} imports {t}"
        for p in _modules("figures")
        for t in _imports(p)
        if t == "common.tensors" or t.startswith("common.tensors.")
    ]
    assert not bad, "figures must not import common.tensors:\n" + "\n".join(bad)


def test_store_is_a_leaf() -> None:
    bad = []
    for path in _modules("common/store"):
        for target in _toolkit_targets(_imports(path)):
            if not (target == "common.store" or target.startswith("common.store.")):
                bad.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not bad, "the store imports nothing else of the toolkit:\n" + "\n".join(bad)


def test_landscape_init_is_import_free() -> None:
    tree = ast.parse((ROOT / "landscape" / "__init__.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]


def test_store_names_and_figures_do_not_load_torch() -> None:
    code = (
        "import sys; from common import store; import common.names; import figures, figures.data, "
        "figures.style; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ----------------------------------------------------------------------------- private names


def _private_definitions(path: Path) -> set[str]:
    """Single-underscore names a module defines: module-level names, class attributes and
    fields, and ``self._x`` assignments."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def add(name: str) -> None:
        if name.startswith("_") and not name.startswith("__"):
            found.add(name)

    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if isinstance(t, ast.Name):
                    add(t.id)
                elif isinstance(t, ast.Attribute):
                    add(t.attr)
    return found


def test_no_module_uses_another_modules_private_names() -> None:
    paths = _all_modules()
    own = {p: _private_definitions(p) for p in paths}
    elsewhere: dict[str, set[Path]] = {}
    for p, names in own.items():
        for n in names:
            elsewhere.setdefault(n, set()).add(p)
    bad = []
    for p in paths:
        rel = p.relative_to(ROOT).as_posix()
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.split(".")[0] in PACKAGES
            ):
                bad += [
                    f"{rel} imports {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")
                ]
            elif (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                base = node.value.id if isinstance(node.value, ast.Name) else None
                if base in ("self", "cls"):
                    continue
                if node.attr in own[p]:
                    continue
                if node.attr in elsewhere:  # defined privately in another toolkit module
                    bad.append(f"{rel} uses {node.attr} of another module ({ast.unparse(node)})")
    assert not bad, "private names used across modules:\n" + "\n".join(sorted(set(bad)))


# ----------------------------------------------------------------------------- name tables


def _tables() -> dict[str, set[str]]:
    from common import names

    return {
        "BOUND_METHODS": set(names.BOUND_METHODS),
        "SLOPES": set(names.SLOPES),
        "TRAIN_METHODS": set(names.TRAIN_METHODS),
        "SCAN_KINDS": set(names.SCAN_KINDS),
        "FILE_KINDS": set(names.FILE_KINDS),
        "PAPER_METHODS": set(names.PAPER_METHODS),
        "DIRECTION_NORMS": set(names.DIRECTION_NORMS),
        "LABELS": set(names.LABELS),
        "SCAN_LOSSES|certified": {*names.SCAN_LOSSES, "certified"},
    }


def _string_collections(tree: ast.AST):
    """Every tuple / list / set literal of string constants and every dict literal's string keys."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = [k for k in node.keys if k is not None]
        else:
            continue
        strings = [
            e.value for e in items if isinstance(e, ast.Constant) and isinstance(e.value, str)
        ]
        if len(strings) >= 2:
            yield node, set(strings)


def test_each_name_table_is_defined_once() -> None:
    """A literal list of three or more names of one table (all of them when it has fewer) outside
    ``common/names.py`` is a copy that will drift: import the table instead."""
    tables = _tables()
    bad = []
    for p in _all_modules():
        rel = p.relative_to(ROOT).as_posix()
        if rel == "common/names.py":
            continue
        for node, strings in _string_collections(ast.parse(p.read_text())):
            if rel == "bounds/relaxations.py" and strings == tables["SLOPES"]:
                continue  # POLICIES, the engine's name -> function table (held equal to SLOPES below)
            for name, table in tables.items():
                shared = strings & table
                if len(shared) >= min(3, len(table)):
                    bad.append(f"{rel}:{node.lineno} repeats {name}: {sorted(shared)}")
    assert not bad, "name tables copied instead of imported from common.names:\n" + "\n".join(bad)


def test_name_table_matches_the_engine() -> None:
    from bounds.relaxations import POLICIES
    from common import names

    assert list(names.SLOPES) == list(POLICIES)
    assert set(names.SEARCHED_SLOPES) <= set(names.SLOPES)
    for m in names.TRAIN_METHODS.values():
        assert m.bound is None or m.bound in names.BOUND_METHODS
        assert m.slope is None or m.slope in names.SLOPES
    assert set(names.PAPER_METHODS) <= set(names.TRAIN_METHODS) <= set(names.LABELS)
    assert set(names.SCAN_LOSSES) <= set(names.LABELS)


# ----------------------------------------------------------------------------- size and docs


def _statements(path: Path) -> int:
    """Logical lines: one per simple statement or compound-statement header (a docstring is one)."""
    with path.open("rb") as f:
        return sum(1 for tok in tokenize.tokenize(f.readline) if tok.type == tokenize.NEWLINE)


def test_no_module_is_over_300_statements() -> None:
    long = [
        f"{p.relative_to(ROOT)}: {n}"
        for p in _all_modules()
        if (n := _statements(p)) > MAX_STATEMENTS
    ]
    assert not long, f"modules over {MAX_STATEMENTS} statements (split them by job):\n" + "\n".join(
        long
    )


def test_statement_count_counts_statements(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text('"""Doc\nstring."""\n\nx = f(\n    1,\n    2,\n)\nif x:\n    y = 1  # c\n')
    assert _statements(f) == 4


def test_docstrings_point_inside_the_repository() -> None:
    bad = [str(p.relative_to(ROOT)) for p in _all_modules() if "DESIGN" in p.read_text()]
    assert not bad, (
        "these cite DESIGN.md, which is not in the repository (cite docs/):\n" + "\n".join(bad)
    )
    cited = set()
    for p in _all_modules():
        for word in p.read_text().split():
            word = word.strip("`'\"(),.;:")
            if word.startswith("docs/") and word.endswith(".md"):
                cited.add(word)
    missing = sorted(c for c in cited if not (ROOT / c).is_file())
    assert not missing, f"docstrings cite documents that do not exist: {missing}"


# ----------------------------------------------------------------------------- docs/design.md


def _design_sections() -> dict[str, str]:
    """``docs/design.md``'s module map: package -> the text of its ``### `package/`...`` section."""
    import re

    text = (ROOT / "docs" / "design.md").read_text()
    parts = re.split(r"^### `([a-z_]+)/`.*$", text, flags=re.M)
    return {parts[i]: parts[i + 1].split("\n## ")[0] for i in range(1, len(parts) - 1, 2)}


def test_design_doc_maps_every_module_that_exists() -> None:
    """Every module of the packages is named in its package's section of the module map (a
    subpackage's modules by file name, beside the subpackage), and every file the map names
    exists: the map cannot drift from the code."""
    import re

    sections = _design_sections()
    assert set(PACKAGES) <= set(sections), f"module map sections: {sorted(sections)}"
    missing, stale = [], []
    for pkg in PACKAGES:
        named: set[str] = set()
        for row in sections[pkg].splitlines():
            cells = row.split("|")
            if not row.startswith("|") or len(cells) < 3:
                continue
            first = cells[1]  # the module column; a subpackage's row names its files after it
            named |= set(re.findall(r"`([A-Za-z_][\w/]*\.py)`", first))
            if re.fullmatch(r"\s*`[a-z_]+/`\s*", first):
                named |= set(re.findall(r"`([A-Za-z_]\w*\.py)`", cells[2]))
        files = {p.relative_to(ROOT / pkg).as_posix() for p in _modules(pkg)}
        for rel in sorted(files):
            if rel.endswith("__init__.py") and rel != "__init__.py":
                continue  # a subpackage's __init__ is its row
            if rel not in named and Path(rel).name not in named:
                missing.append(f"{pkg}/{rel}")
        for name in sorted(named):
            if not any(f == name or f.endswith("/" + name) for f in files):
                stale.append(f"{pkg}: {name}")
    assert not missing, "modules missing from docs/design.md's module map:\n" + "\n".join(missing)
    assert not stale, "docs/design.md names files that do not exist:\n" + "\n".join(stale)


def test_design_doc_names_only_tables_that_exist() -> None:
    """The name-table section lists only tables ``common.names`` defines."""
    import re

    from common import names

    text = (ROOT / "docs" / "design.md").read_text()
    section = text.split("### The one name table")[1].split("\n## ")[0]
    tables = set(re.findall(r"`([A-Z][A-Z_]+)`", section))
    assert tables, "no table named in the name-table section"
    gone = sorted(t for t in tables if not hasattr(names, t))
    assert not gone, f"docs/design.md names tables common.names lacks: {gone}"


# ----------------------------------------------------------------------------- function size

MAX_FUNCTION_LINES = 80
MAX_ENGINE_PARAMETERS = 8
# the two keyword forms users call (issue 22: thin wrappers over a BoundSpec)
KEYWORD_WRAPPERS = {"compute_bounds", "robust_cross_entropy"}
# the names bounds/ gives the network and its input; they do not count as settings
MODEL_AND_INPUT = {"model", "net", "ops", "x"}

# Functions still over MAX_FUNCTION_LINES, each waiting for its split (issue 22). A function
# leaves this list when it is split: the test below fails once a listed function is short enough
# (or gone), so the list cannot go stale. Add nothing here; split the function instead.
LONG_FUNCTIONS_TO_SPLIT: set[str] = set()  # none left; a new entry needs a reason beside it


def _functions(path: Path):
    """``(qualified name, node)`` of every function and method of a module, nested ones too."""

    def walk(node: ast.AST, prefix: str):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = prefix + child.name
                yield name, child
                yield from walk(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, prefix + child.name + ".")
            else:
                yield from walk(child, prefix)

    yield from walk(ast.parse(path.read_text(), filename=str(path)), "")


def _function_lengths() -> dict[str, int]:
    """``path:qualified name`` -> lines from ``def`` to the last line of the body."""
    return {
        f"{p.relative_to(ROOT).as_posix()}:{name}": node.end_lineno - node.lineno + 1
        for p in _all_modules()
        for name, node in _functions(p)
    }


def test_no_function_is_over_80_lines() -> None:
    """A function a reader must scroll through is a function doing several jobs: split it into
    named parts (nested functions count, inside their outer function and on their own)."""
    long = {k: n for k, n in _function_lengths().items() if n > MAX_FUNCTION_LINES}
    new = sorted(f"{k}: {n} lines" for k, n in long.items() if k not in LONG_FUNCTIONS_TO_SPLIT)
    assert not new, f"functions over {MAX_FUNCTION_LINES} lines (split them):\n" + "\n".join(new)


def test_the_list_of_long_functions_is_not_stale() -> None:
    lengths = _function_lengths()
    done = sorted(
        f"{k}: {lengths[k]} lines" if k in lengths else f"{k}: no such function"
        for k in LONG_FUNCTIONS_TO_SPLIT
        if lengths.get(k, 0) <= MAX_FUNCTION_LINES
    )
    assert not done, (
        "LONG_FUNCTIONS_TO_SPLIT names functions that are no longer over "
        f"{MAX_FUNCTION_LINES} lines; remove them from the list:\n" + "\n".join(done)
    )


def _settings(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    """A function's parameters less ``self`` / ``cls`` and the network and its input."""
    a = node.args
    names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    names += [f"*{p.arg}" for p in (a.vararg, a.kwarg) if p is not None]
    return [n for n in names if n not in {"self", "cls"} | MODEL_AND_INPUT]


def test_no_engine_function_takes_more_than_8_settings() -> None:
    """Bound settings travel as one ``bounds.BoundSpec``, not as loose arguments: only the two
    keyword wrappers users call may take more than 8 parameters besides the model and input."""
    wide = sorted(
        f"{p.relative_to(ROOT).as_posix()}:{name}: {len(s)} ({', '.join(s)})"
        for p in _modules("bounds")
        for name, node in _functions(p)
        if node.name not in KEYWORD_WRAPPERS and len(s := _settings(node)) > MAX_ENGINE_PARAMETERS
    )
    assert not wide, (
        f"bounds/ functions with more than {MAX_ENGINE_PARAMETERS} parameters besides the model "
        "and input (pass a BoundSpec):\n" + "\n".join(wide)
    )


def test_the_size_rules_measure_what_they_say(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text(
        "class C:\n    def m(self, model, x, a, b):\n        def inner():\n            pass\n"
        "        return 1\n"
    )
    found = {name: node for name, node in _functions(f)}
    assert set(found) == {"C.m", "C.m.inner"}
    assert found["C.m"].end_lineno - found["C.m"].lineno + 1 == 4
    assert _settings(found["C.m"]) == ["a", "b"]
