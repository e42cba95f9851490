"""Stage deps at a method's grain, as DVC itself reports them: in a copy of the pipeline whose lock records every stage
up to date, an edit to one method's module leaves `dvc status` reporting changed code deps for that method's own
stages (train@, evaluate@) and for protocols (which can train any method) only; fetch, prepare, embed and the other
methods' stages depend on no method they do not load. The control lists the whole methods folder as fetch's dep, as
dvc.yaml once did, and sees the same edit reach fetch.

No pipeline run: every declared output is a placeholder written by hand (the outputs of tests/test_clean.py), and
`dvc commit --force` records the lock from them and the code as it is.
"""
from __future__ import annotations

import json
import subprocess

import yaml

from peftqa.cli.clean import declared_outputs

METHODS = ["base", "ia3"]  # ia3: a method whose module imports nothing of another method's


def dvc(root, env, *args: str) -> str:
    result = subprocess.run(["dvc", *args], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def write_placeholders(root) -> None:
    """Every output dvc.yaml declares for params' methods, as a small file or a folder holding one."""
    for path in declared_outputs(root):
        if path.suffix:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("placeholder\n")
        else:
            path.mkdir(parents=True, exist_ok=True)
            (path / "part.txt").write_text("placeholder\n")


def changed_code(root, env) -> set[str]:
    """The stages whose code deps (peftqa/, stages/) changed since the lock, by `dvc status --json`."""
    status = json.loads(dvc(root, env, "status", "--json") or "{}")
    return {stage for stage, entries in status.items() for entry in entries if isinstance(entry, dict)
            for path in entry.get("changed deps", {}) if path.startswith(("peftqa/", "stages/"))}


def edit(path) -> None:
    path.write_text(path.read_text(encoding="utf-8") + "# an edit, as a docstring fix would be\n", encoding="utf-8")


def committed_copy(repo_copy, pipeline_env, write_params):
    write_params(repo_copy, {"methods": METHODS})
    write_placeholders(repo_copy)
    dvc(repo_copy, pipeline_env, "commit", "--force", "--quiet")
    assert changed_code(repo_copy, pipeline_env) == set(), "the lock just committed should match the code"
    return repo_copy


def test_a_method_edit_reaches_only_that_methods_stages(repo_copy, pipeline_env, write_params):
    root = committed_copy(repo_copy, pipeline_env, write_params)
    edit(root / "peftqa/methods/ia3.py")
    assert changed_code(root, pipeline_env) == {"train@ia3", "evaluate@ia3", "protocols"}


def test_the_status_check_sees_a_stage_listing_the_whole_methods_folder(repo_copy, pipeline_env, write_params):
    dvc_yaml = repo_copy / "dvc.yaml"
    stages = yaml.safe_load(dvc_yaml.read_text(encoding="utf-8"))
    stages["stages"]["fetch"]["deps"].append("peftqa/methods")
    dvc_yaml.write_text(yaml.safe_dump(stages, sort_keys=False), encoding="utf-8")
    root = committed_copy(repo_copy, pipeline_env, write_params)
    edit(root / "peftqa/methods/ia3.py")
    assert changed_code(root, pipeline_env) == {"fetch", "train@ia3", "evaluate@ia3", "protocols"}
