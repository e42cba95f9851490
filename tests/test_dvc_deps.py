"""dvc.yaml lists, for every `python -m stages.<x>` stage, exactly the .py files that running it can import, directly
or through another module: a change to any of them re-runs the stage (dvc repro rebuilds what changed), and a file it
no longer imports is not listed.

The closure runs through stages/ and peftqa/ alike, and counts the package faces an import runs first: importing
`peftqa.training.run` also runs peftqa/__init__.py and peftqa/training/__init__.py, and `python -m stages.train`
runs stages/__init__.py. Imports inside functions count (a lazily imported module decides the output as much as one
imported at the top); imports under `if TYPE_CHECKING:` do not (they never run).

One import is by name, not by statement: peftqa.methods.registry.get(name) imports peftqa/methods/<name>.py the first
time a method is asked for. So a stage whose closure holds the registry names which methods it loads in
METHODS_LOADED: a foreach stage over params' methods loads its own item (dvc.yaml lists `peftqa/methods/${item}.py`,
and the check runs for every shipped method), few_shot the zero-shot base, protocols any of them.

Run as a script (`python tests/test_dvc_deps.py`), it prints each stage's .py deps as the closure implies them, the
stage's own module first and the rest sorted, indented to paste under the stage's `deps:` in dvc.yaml.
"""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from peftqa.params.knobs import BUILTIN

ROOT = Path(__file__).resolve().parents[1]
REGISTRY_FILE = "peftqa/methods/registry.py"  # its get(name) imports peftqa/methods/<name>.py by name
ITEM, ALL = "${item}", "all"
METHODS_LOADED = {  # stage -> the methods it loads through the registry: its foreach item, all, or these
    "train": ITEM, "evaluate": ITEM, "few_shot": ("base",), "protocols": ALL}
Import = ast.Import | ast.ImportFrom


def module_name(path: Path, root: Path) -> str:
    """The dotted name of a file under root: peftqa/training/run.py -> peftqa.training.run, a package's __init__.py
    -> the package."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_file(name: str, root: Path) -> Path | None:
    """The file under root that holds module `name` (a module file or a package's __init__.py), None if none does."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def is_type_checking(node: ast.AST) -> bool:
    """`if TYPE_CHECKING:` or `if typing.TYPE_CHECKING:`: its body never runs."""
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and ((isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
                                         or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def import_nodes(node: ast.AST, module_level_only: bool, type_checking: bool | None = None) -> Iterator[Import]:
    """Every import statement below node; with module_level_only, those that run when the module is imported
    (not inside a function; class bodies and `if __name__ == "__main__":` do run). type_checking: whether those under
    `if TYPE_CHECKING:` count (default: unless module_level_only)."""
    type_checking = not module_level_only if type_checking is None else type_checking
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif module_level_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif not type_checking and is_type_checking(child):
            for statement in child.orelse:
                yield from import_nodes(ast.Module(body=[statement], type_ignores=[]), module_level_only,
                                        type_checking)
        else:
            yield from import_nodes(child, module_level_only, type_checking)


def import_targets(path: Path, root: Path, module_level_only: bool, type_checking: bool | None = None) -> set[str]:
    """The absolute dotted names path's import statements name: `import a.b` -> a.b; `from a import b` -> a.b when
    that is a module under root, else a. Relative imports are resolved against path's package."""
    package = module_name(path, root) if path.name == "__init__.py" else module_name(path, root).rpartition(".")[0]
    targets = set()
    for node in import_nodes(ast.parse(path.read_text(encoding="utf-8")), module_level_only, type_checking):
        if isinstance(node, ast.Import):
            targets |= {alias.name for alias in node.names}
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([node.module] if node.module else []))
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            targets.add(submodule if module_file(submodule, root) else base)
    return targets


def with_packages(name: str) -> list[str]:
    """name and the packages importing it runs first: a.b.c -> a, a.b, a.b.c."""
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@functools.lru_cache(maxsize=None)  # the same closures come back for every stage and method checked
def import_closure(module: str, root: Path = ROOT) -> frozenset[str]:
    """The files under root that importing `module` and calling into it can run (its package faces included; imports
    inside functions too, those under `if TYPE_CHECKING:` not), as paths relative to root."""
    seen: set[Path] = set()
    todo = [module_file(name, root) for name in with_packages(module)]
    while todo:
        path = todo.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        for target in import_targets(path, root, module_level_only=False, type_checking=False):
            todo.extend(module_file(name, root) for name in with_packages(target))
    return frozenset(path.relative_to(root).as_posix() for path in seen)


@functools.lru_cache(maxsize=None)  # read once: every stage and method case asks for it
def stage_commands(root: Path = ROOT) -> dict[str, tuple[str, list[str], bool]]:
    """{stage: (its stages module, its deps, whether it is a foreach stage)} for every stage whose command runs a
    stages module."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    out = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        match = re.search(r"python -m stages\.(\w+)", str(body["cmd"]))
        if match:
            deps = [next(iter(d)) if isinstance(d, dict) else d for d in body.get("deps", [])]
            out[name] = (match.group(1), deps, "do" in stage)
    return out


def loaded_methods(stage: str, item: str | None) -> tuple[str, ...]:
    """The methods' modules stage `stage` can import by name (METHODS_LOADED), its foreach item being `item`."""
    loaded = METHODS_LOADED.get(stage, ())
    return (item,) if loaded == ITEM else BUILTIN if loaded == ALL else tuple(loaded)


def implied_deps(module: str, root: Path = ROOT, methods: tuple[str, ...] = ()) -> list[str]:
    """The .py deps a stage running `module` should list, given the methods it loads by name: its own file first,
    then the rest of the closure sorted."""
    own = f"stages/{module}.py"
    closure = import_closure(f"stages.{module}", root).union(
        *(import_closure(f"peftqa.methods.{method}", root) for method in methods))
    return sorted(closure, key=lambda path: (path != own, path))


def stage_cases() -> list[tuple[str, str | None]]:
    """(stage, item) to check: a foreach stage loading its item once per shipped method, every other stage once."""
    return [(stage, item) for stage in sorted(stage_commands())
            for item in (BUILTIN if METHODS_LOADED.get(stage) == ITEM else (None,))]


def stage_deps(stage: str, item: str | None) -> tuple[list[str], list[str]]:
    """(implied, listed) .py deps of stage `stage` with its foreach item `item` put in for ${item}."""
    module, deps, _ = stage_commands()[stage]
    listed = sorted(listed_files([dep.replace(ITEM, item) if item else dep for dep in deps]))
    return implied_deps(module, methods=loaded_methods(stage, item)), listed


def package_files(folder: str, root: Path = ROOT) -> set[str]:
    """Every .py file under a package folder that dvc.yaml names as one dep (DVC hashes the folder; .dvcignore
    leaves out __pycache__)."""
    return {path.relative_to(root).as_posix() for path in (root / folder).rglob("*.py")
            if "__pycache__" not in path.parts}


def listed_files(deps: list[str], root: Path = ROOT) -> set[str]:
    """The code files a stage's deps cover: each .py dep, and every .py file of each package-folder dep."""
    code = [dep for dep in deps if dep.endswith(".py") or (root / dep / "__init__.py").is_file()]
    return {path for dep in code for path in ([dep] if dep.endswith(".py") else package_files(dep, root))}


def collapsed_deps(paths: list[str], root: Path = ROOT) -> list[str]:
    """`paths` with each subpackage of peftqa/ whose files are all in it written as its folder, first wins."""
    folders = sorted({str(Path(path).parent) for path in paths if Path(path).parent.name != "peftqa"
                      and path.startswith("peftqa/")})
    whole = [folder for folder in folders if package_files(folder, root) <= set(paths)]
    out = []
    for path in paths:
        folder = next((f for f in whole if path.startswith(f + "/")), None)
        item = folder or path
        if item not in out:
            out.append(item)
    return out


def test_the_static_reader_tells_module_level_lazy_and_type_only_imports_apart():
    serving, tracking = ROOT / "peftqa/mlops/serving.py", ROOT / "peftqa/mlops/tracking.py"
    # `from peftqa.mlops import environment, tracking` names two submodules
    assert {"peftqa.mlops.environment", "peftqa.mlops.tracking", "peftqa.params"} <= import_targets(serving, ROOT, True)
    # imported inside the model's load_context, only where the model is loaded: lazy, yet a dep
    assert "peftqa.methods.attach" not in import_targets(serving, ROOT, module_level_only=True)
    assert "peftqa.methods.attach" in import_targets(serving, ROOT, module_level_only=False, type_checking=False)
    # under `if TYPE_CHECKING:`, for an annotation only: never run, so no dep
    assert "peftqa.training.probe" not in import_targets(tracking, ROOT, module_level_only=False, type_checking=False)
    assert "peftqa.training.probe" in import_targets(tracking, ROOT, module_level_only=False)


def test_the_closure_counts_package_faces_and_lazy_imports_and_skips_type_only_ones(tmp_path):
    files = {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "from . import leaf\n",  # a face importing its own submodule
        "pkg/sub/leaf.py": "import os\nfrom .. import relative\n",
        "pkg/top.py": ("from typing import TYPE_CHECKING\nfrom pkg.sub.leaf import os\n"
                       "if TYPE_CHECKING:\n    from pkg import typed\nelse:\n    from pkg import fallback\n"
                       "class A:\n    from pkg import in_class\n"
                       "def f():\n    from pkg import lazy\n"),
        **{f"pkg/{name}.py": "" for name in ("relative", "typed", "fallback", "in_class", "lazy")},
    }
    for relative, text in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(text, encoding="utf-8")
    assert import_closure("pkg.top", tmp_path) == {
        "pkg/__init__.py", "pkg/top.py", "pkg/sub/__init__.py", "pkg/sub/leaf.py", "pkg/relative.py",
        "pkg/fallback.py", "pkg/in_class.py", "pkg/lazy.py"}


@pytest.mark.parametrize("stage,item", stage_cases())
def test_every_imported_module_is_a_dep(stage, item):
    implied, listed = stage_deps(stage, item)
    missing = [path for path in implied if path not in listed]
    assert not missing, f"dvc.yaml stage '{stage}' ({item or 'no item'}) imports {missing} but does not list them"


@pytest.mark.parametrize("stage,item", stage_cases())
def test_every_listed_py_dep_is_imported(stage, item):
    implied, listed = stage_deps(stage, item)
    stale = [path for path in listed if path not in implied]
    assert not stale, (f"dvc.yaml stage '{stage}' ({item or 'no item'}) lists {stale} under deps, but its command "
                       "can never import them (or they do not exist)")


def test_every_stage_that_holds_the_registry_names_the_methods_it_loads():
    """A stage that can reach the registry loads methods by name: METHODS_LOADED must say which, or its deps would
    miss them; and a stage named there must reach the registry."""
    reach = {stage for stage, (module, _, _) in stage_commands().items()
             if REGISTRY_FILE in import_closure(f"stages.{module}")}
    assert reach == set(METHODS_LOADED), f"stages reaching {REGISTRY_FILE}: {sorted(reach)}"


def test_a_foreach_stage_lists_its_own_method_module_by_item():
    for stage, loaded in METHODS_LOADED.items():
        if loaded == ITEM:
            assert f"peftqa/methods/{ITEM}.py" in stage_commands()[stage][1], stage


def printed_deps(stage: str) -> list[str]:
    """A stage's .py deps as dvc.yaml lists them: a foreach stage's own method as peftqa/methods/${item}.py."""
    module = stage_commands()[stage][0]
    if METHODS_LOADED.get(stage) != ITEM:
        return collapsed_deps(implied_deps(module, methods=loaded_methods(stage, None)))
    example = BUILTIN[0]
    paths = implied_deps(module, methods=(example,))
    return collapsed_deps([f"peftqa/methods/{ITEM}.py" if p == f"peftqa/methods/{example}.py" else p for p in paths])


def print_implied_deps() -> None:
    """Each stage's .py deps as the closure implies them, shaped like dvc.yaml (a foreach stage's under `do:`)."""
    for stage, (_, _, foreach) in stage_commands().items():
        indent = "    " if foreach else "  "
        print(f"  {stage}:" + ("\n    do:" if foreach else ""))
        print(f"{indent}  deps:  # the .py files only: keep the stage's data deps above them")
        print("\n".join(f"{indent}    - {path}" for path in printed_deps(stage)))


if __name__ == "__main__":
    print_implied_deps()
