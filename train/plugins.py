"""Your own model or dataset as a Python function: ``FILE.py:function`` or ``package.module:function``.

Wherever the toolkit takes a model or dataset name (``--model``, ``--dataset``,
``TrainConfig.model`` / ``.dataset``, :func:`train.models.build_model`,
:func:`train.data.load_dataset`), it also takes a *reference* to a function:

``path/to/file.py:function``
    the file is imported (its folder is put on ``sys.path`` while it is, so it can import its
    neighbours); a relative path is relative to the current directory, and
    :func:`canonical` makes it absolute, which is how a run's config stores it.
``package.module:function``
    the module is imported with ``importlib``, as ``import package.module`` would.

``function`` may be a dotted attribute path (``module:Class.build``). A model function is called
as ``function(input_shape, n_classes, **model_options)`` (:mod:`train.usermodels`), a dataset
function with no arguments (:mod:`train.userdata`). Every failure is one :class:`PluginError`
(a ``ValueError``) naming the reference: a malformed reference, a missing file or module, an
import that fails, a missing attribute, something that is not callable, or a call that raises
(the original exception is chained, so ``LANDSCAPE_DEBUG=1`` shows its traceback).

A file is imported once per content (editing it between two calls re-imports it, whatever its
size and modification time say);
its module is registered in ``sys.modules`` under a private name derived from its path.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "PluginError",
    "is_reference",
    "canonical",
    "resolve",
    "call",
    "describe_exception",
    "check_trusted",
]


class PluginError(ValueError):
    """A model or dataset reference that cannot be imported, found or called."""


_FILE_MODULES: dict[str, tuple[str, Any]] = {}


def is_reference(name: object) -> bool:
    """True when ``name`` is a ``TARGET:function`` reference rather than a registered name."""
    return isinstance(name, str) and ":" in name


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _split(ref: str, what: str) -> tuple[str, str, bool]:
    """``(target, attribute path, is_file)``; a malformed reference is a PluginError."""
    target, _, attr = ref.strip().rpartition(":")
    form = f"{what} reference {ref!r} must be FILE.py:function or package.module:function"
    if not target or not attr or not all(part.isidentifier() for part in attr.split(".")):
        raise PluginError(f"{form} (the part after the last ':' must be a function name)")
    is_file = target.endswith(".py") or "/" in target or os.sep in target or os.path.isfile(target)
    if is_file:
        if not target.endswith(".py"):
            raise PluginError(f"{form}: {target!r} is not a .py file")
    elif not all(part.isidentifier() for part in target.split(".")):
        raise PluginError(f"{form}: {target!r} is neither a .py file nor a dotted module name")
    return target, attr, is_file


def canonical(ref: str, what: str = "model") -> str:
    """``ref`` checked for its form, with a file's path made absolute (the module form is kept)."""
    target, attr, is_file = _split(ref, what)
    if is_file:
        target = os.path.abspath(os.path.expanduser(target))
    return f"{target}:{attr}"


def _import_file(path: str, ref: str, what: str) -> Any:
    p = Path(path)
    if not p.is_file():
        where = "is a folder" if p.is_dir() else "does not exist"
        raise PluginError(f"{what} file {path} (from {ref!r}) {where}")
    stamp = hashlib.sha256(
        p.read_bytes()
    ).hexdigest()  # the content: an edit that keeps size and mtime counts too
    cached = _FILE_MODULES.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    name = "landscape_user_" + hashlib.sha1(path.encode()).hexdigest()[:16]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"{what} file {path} (from {ref!r}) cannot be imported as Python")
    module = importlib.util.module_from_spec(spec)
    folder = str(p.parent)
    added = folder not in sys.path
    if added:
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except SystemExit as exc:
        sys.modules.pop(name, None)
        raise PluginError(
            f"importing {what} file {path} failed: it called sys.exit({exc.code!r})"
        ) from exc
    except Exception as exc:
        sys.modules.pop(name, None)
        raise PluginError(
            f"importing {what} file {path} failed: {describe_exception(exc)}"
        ) from exc
    finally:
        if added and folder in sys.path:
            sys.path.remove(folder)
    _FILE_MODULES[path] = (stamp, module)
    return module


def _import_module(target: str, ref: str, what: str) -> Any:
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (target == exc.name or target.startswith(exc.name + ".")):
            raise PluginError(
                f"{what} module {target!r} (from {ref!r}) cannot be found: no module named "
                f"{exc.name!r} on the Python path (for a file, write path/to/file.py:function)"
            ) from exc
        raise PluginError(
            f"importing {what} module {target!r} failed: {describe_exception(exc)}"
        ) from exc
    except Exception as exc:
        raise PluginError(
            f"importing {what} module {target!r} failed: {describe_exception(exc)}"
        ) from exc


def check_trusted(
    ref: object, what: str, source: str, named: str | None = None, trust: bool = False
) -> None:
    """Refuse (PluginError) to import the code reference ``ref`` that ``source`` (a checkpoint, a
    run's config) names, unless the user asked for it: by naming the same reference on the
    command line (``named``, compared in :func:`canonical` form) or by ``trust`` (``--trust-code``).
    Names that are not references (the zoo, the built-in datasets) always pass."""
    if not is_reference(ref) or trust:
        return
    if named is not None:
        try:
            same = canonical(named, what) == canonical(str(ref), what)
        except PluginError:
            same = False
        if same:
            return
        raise PluginError(
            f"--{what} {named}: {source} names {what} code {ref!r}, not this; name the same reference, "
            "or pass --trust-code to run the one it names"
        )
    raise PluginError(
        f"{source} names {what} code {ref!r}; reading a file never runs the code it names: pass "
        f"--{what} {ref} to name it yourself, or --trust-code, to import and run it"
    )


def resolve(ref: str, what: str = "model") -> Callable[..., Any]:
    """Import the target of ``ref`` and return the callable it names."""
    target, attr, is_file = _split(ref, what)
    if is_file:
        path = os.path.abspath(os.path.expanduser(target))
        module = _import_file(path, ref, what)
        place = f"{what} file {path}"
    else:
        module = _import_module(target, ref, what)
        place = f"{what} module {target!r}"
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            if i == 0:
                public = sorted(
                    k
                    for k, v in vars(module).items()
                    if callable(v)
                    and not k.startswith("_")
                    and getattr(v, "__module__", None) == module.__name__
                )
                defined = (
                    f" (it defines {', '.join(public[:8])}{', ...' if len(public) > 8 else ''})"
                    if public
                    else " (it defines no functions)"
                )
                raise PluginError(f"{place} has no function {part!r}{defined}")
            raise PluginError(f"{place}: {'.'.join(attr.split('.')[:i])} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise PluginError(
            f"{what} reference {ref!r} names an object of type {type(obj).__name__}, not a function"
        )
    return obj


def call(ref: str, fn: Callable[..., Any], *args: Any, what: str = "model", **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``; any exception it raises becomes one PluginError naming ``ref``."""
    try:
        return fn(*args, **kwargs)
    except (
        SystemExit
    ) as exc:  # a function that exits would end the command silently, with its status
        raise PluginError(
            f"{what} function {ref!r} called sys.exit({exc.code!r}) instead of returning"
        ) from exc
    except Exception as exc:
        raise PluginError(f"{what} function {ref!r} raised {describe_exception(exc)}") from exc
