"""dvc.yaml lists, for every `python -m stages.<x>` stage, each stages/ module that <x> imports at module level,
directly or through another module: a change to any of them re-runs the stage (dvc repro rebuilds what changed)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = ROOT / "stages"


def module_imports(path: Path) -> set[str]:
    """The stages modules a file imports at module level (imports inside functions are left out: they are lazy)."""
    found = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module == "stages":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("stages.")}
    return {name for name in found if (STAGES / f"{name}.py").is_file()}


def import_closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(module_imports(STAGES / f"{name}.py"))
    return seen


def stage_commands() -> dict[str, tuple[str, list[str]]]:
    """{stage: (its stages module, its deps)} for every stage whose command runs a stages module."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    out = {}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        match = re.search(r"python -m stages\.(\w+)", str(body["cmd"]))
        if match:
            out[name] = (match.group(1), [next(iter(d)) if isinstance(d, dict) else d for d in body["deps"]])
    return out


def test_the_static_reader_sees_module_level_imports_only():
    assert {"common", "methods"} <= module_imports(STAGES / "params.py")
    assert "families" not in module_imports(STAGES / "params.py")  # imported inside ModelParams, only when needed


@pytest.mark.parametrize("stage", sorted(stage_commands()))
def test_every_imported_stages_module_is_a_dep(stage):
    module, deps = stage_commands()[stage]
    missing = sorted(f"stages/{name}.py" for name in import_closure(module) if f"stages/{name}.py" not in deps)
    assert not missing, f"dvc.yaml stage '{stage}' imports {missing} but does not list them under deps"
