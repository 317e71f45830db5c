"""The public plugin contract: built-in plugins import only what ``ladle`` exports, exactly as a
third party would, and ``ladle.__all__`` is exactly the public API."""

from __future__ import annotations

import ast
from pathlib import Path

import ladle

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
#: Besides ``ladle`` itself, what a plugin may import from ladle: nothing.
PUBLIC = {"ladle"}


def _ladle_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import of a ``ladle`` module in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found.extend((node.lineno, name) for name in names if name == "ladle" or name.startswith("ladle."))
    return found


def _plugin_of(path: Path) -> tuple[str, ...]:
    """The plugin package a file belongs to (``("runtimes", "torch")``)."""
    return path.relative_to(PLUGINS).parts[:2]


def test_built_in_plugins_import_only_the_public_api() -> None:
    offenders = []
    for path in sorted(PLUGINS.rglob("*.py")):
        for line, module in _ladle_imports(path):
            if module not in PUBLIC:
                offenders.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_built_in_plugins_never_import_each_other() -> None:
    offenders = []
    for path in sorted(PLUGINS.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                target = path.parent
                for _ in range(node.level - 1):
                    target = target.parent
                if target == PLUGINS or not target.is_relative_to(PLUGINS):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} reaches outside its plugin")
                elif _plugin_of(target / "x.py") != _plugin_of(path):
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} imports another plugin")
    assert not offenders, "\n".join(offenders)


def test_all_lists_exactly_the_public_names() -> None:
    exported = set(ladle.__all__)
    assert len(exported) == len(ladle.__all__), "a name is listed twice"
    missing = [name for name in exported if not hasattr(ladle, name)]
    assert not missing, f"listed but not defined: {missing}"
    public = {name for name in vars(ladle) if not name.startswith("_") and not _is_submodule(name)}
    assert public - exported == set(), f"public but not in __all__: {sorted(public - exported)}"


def _is_submodule(name: str) -> bool:
    import types

    return isinstance(getattr(ladle, name), types.ModuleType) or name == "annotations"
