"""The package's layers import only downwards: utils < core < bundled < evaluation < store < the CLI.

A newcomer can then read the library from the bottom up, and the core (the method) runs on any
U-Net without the bundled faces, the evaluation stack or the pipeline. The library never
imports the pipeline (prefect, tasks, flows); only the CLI, the application on top, starts flows.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "localedit"
LAYERS = ["utils", "core", "bundled", "evaluation", "store"]  # bottom to top; top-level modules sit above all
PIPELINE = {"prefect", "prefect_dask", "tasks", "flows"}


def layer(module: str) -> int:
    """Layer index of a dotted localedit module name."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every import in a file, function-local ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module in ("localedit", *(f"localedit.{name}" for name in LAYERS)):
                found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_is_in_a_layer():
    top_level = {p.stem for p in PACKAGE.glob("*.py")}
    assert top_level == {"__init__", "cli"}, "library modules belong in a layer subpackage"
    assert {p.parent.name for p in MODULES} == {"localedit", *LAYERS}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_reach_down(path):
    name = ".".join(("localedit", *path.relative_to(PACKAGE).with_suffix("").parts))
    own = layer(name)
    upward = [(line, m) for line, m in imports(path) if m.startswith("localedit.") and layer(m) > own]
    assert not upward, f"{name} (layer {own}) imports upwards: {upward}"
    pipeline = [(line, m) for line, m in imports(path) if m.split(".")[0] in PIPELINE]
    assert name == "localedit.cli" or not pipeline, f"{name} imports the pipeline: {pipeline}"


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from localedit.store import catalogue\n    import prefect\n")
    assert [m for _, m in imports(bad)] == ["localedit.store", "localedit.store.catalogue", "prefect"]
    assert layer("localedit.store.catalogue") > layer("localedit.core.mining")


def test_package_exports_resolve_lazily():
    import subprocess
    import sys

    import localedit

    for name in localedit.__all__:
        assert callable(getattr(localedit, name)), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        localedit.nope  # noqa: B018
    # a fresh interpreter: importing the package loads no torch until a name is used
    code = "import sys, localedit; assert 'torch' not in sys.modules; localedit.load_model; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)
