"""The locked environment (peftqa/mlops/environment.py, requirements/): .venv holds exactly the lock's packages at the
lock's versions, the lock was made from this pyproject.toml's dependencies, the two variants differ only in torch's
build, and a run names the lock it was made with."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from peftqa.files import sha256_file
from peftqa.mlops import environment, serving, tracking

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = REPO_ROOT / "pyproject.toml"


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    return [Requirement(spec) for spec in project["dependencies"] + project["optional-dependencies"]["test"]]


def test_the_venv_holds_exactly_the_lock():
    """What `make install` installed is what requirements/cpu.txt (and the side locks) say, no more and no less."""
    assert sys.prefix == str(REPO_ROOT / ".venv"), "run the suite with .venv's python (make test)"
    recorded = environment.installed_lock()
    assert recorded["variant"] == "cpu", f"{sys.prefix} was not installed by `make install` ({recorded})"
    problems = environment.differences(environment.lock_pins("cpu"), environment.installed_versions())
    assert problems == [], "the venv differs from the lock: run `make install`\n" + "\n".join(problems)
    assert recorded["matches"] == "true"


def test_differences_name_every_package_that_left_the_lock():
    """The negative control of the test above: the check sees a changed version, a missing and an extra package."""
    pins = {"torch": "2.13.0+cpu", "peft": "0.21.2", "tqdm": "4.67.1"}
    installed = {"torch": "2.13.0+cpu", "peft": "0.21.1", "rich": "14.0.0", "peftqa": "0.1.0", "pip": "23.2.1"}
    assert environment.differences(pins, installed) == [
        "peft: locked 0.21.2, installed 0.21.1", "tqdm: locked 4.67.1, installed nothing",
        "rich: installed 14.0.0, not in the lock"]  # the project and the venv's pip are not the lock's


@pytest.mark.parametrize("variant", environment.VARIANTS)
def test_each_lock_was_made_from_this_pyprojects_dependencies(variant):
    """A dependency changed in pyproject.toml without `make lock` fails here: the stamped digest differs, and every
    declared requirement must be met by the lock's pin."""
    lock = environment.lock_path(variant)
    assert environment.stamped_digest(lock) == environment.dependency_digest(PYPROJECT), \
        f"pyproject.toml's dependencies changed since {lock} was made: run `make lock`"
    pins = environment.read_pins(lock)
    for requirement in declared_requirements():
        name = environment.normalize(requirement.name)
        assert name in pins, f"{requirement} is declared but not in {lock}"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{lock} pins {name}=={pins[name]}"
    blocks = pin_blocks(lock.read_text(encoding="utf-8"))
    assert len(blocks) == len(pins) and all("--hash=sha256:" in block for block in blocks), f"{lock}: a pin has no hash"


def pin_blocks(text: str) -> list[str]:
    """Each `name==version \\` line with the lines that continue it."""
    blocks, current = [], None
    for line in text.splitlines():
        if environment.PIN.match(line):
            current = [line]
            blocks.append(current)
        elif current is not None and line.startswith("    --hash="):
            current.append(line)
    return ["\n".join(block) for block in blocks]


def test_a_changed_dependency_changes_the_digest_and_a_changed_tool_setting_does_not(tmp_path):
    """The negative control of the digest check: a pyproject.toml with one dependency bumped no longer matches the
    committed lock; one with only its ruff settings changed still does."""
    bumped, restyled = tmp_path / "bumped.toml", tmp_path / "restyled.toml"
    text = PYPROJECT.read_text(encoding="utf-8")
    assert '"peft==0.21.2"' in text and "line-length = 120" in text
    bumped.write_text(text.replace('"peft==0.21.2"', '"peft==0.21.3"'), encoding="utf-8")
    restyled.write_text(text.replace("line-length = 120", "line-length = 100"), encoding="utf-8")
    stamped = environment.stamped_digest(environment.lock_path("cpu"))
    assert environment.dependency_digest(bumped) != stamped
    assert environment.dependency_digest(restyled) == stamped


def test_the_cuda_lock_differs_from_the_cpu_lock_only_in_torchs_build():
    cpu, cuda = (environment.read_pins(environment.lock_path(v)) for v in ("cpu", "cuda"))
    assert cpu["torch"] == "2.13.0+cpu" and cuda["torch"] == "2.13.0"  # PyPI's 2.13.0 is the CUDA build
    only_cuda = set(cuda) - set(cpu)
    assert only_cuda and all(n.startswith(("nvidia-", "cuda-")) or n == "triton" for n in only_cuda), only_cuda
    assert not set(cpu) - set(cuda)
    assert {n: v for n, v in cpu.items() if n != "torch"} == {n: cuda[n] for n in cpu if n != "torch"}


def test_the_stamp_replaces_the_digest_line(tmp_path):
    lock, pyproject = tmp_path / "lock.txt", tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "x"\ndependencies = ["six==1.17.0"]\n', encoding="utf-8")
    lock.write_text("# made by\n#    make lock\n# pyproject dependencies sha256: old\nsix==1.17.0 \\\n"
                    "    --hash=sha256:00\n", encoding="utf-8")
    environment.stamp(lock, pyproject)
    environment.stamp(lock, pyproject)
    lines = lock.read_text(encoding="utf-8").splitlines()
    assert lines[2] == environment.DIGEST_LINE + environment.dependency_digest(pyproject)
    assert sum(line.startswith(environment.DIGEST_LINE) for line in lines) == 1 and lines[3] == "six==1.17.0 \\"


def test_environment_check_passes_in_the_venv_and_fails_against_the_other_lock():
    """`python -m peftqa.mlops.environment check` (what a user runs to ask "is my venv the lock?"): it passes for the
    cpu lock `make install` installed, and fails against the cuda lock, naming torch's build and a missing package."""
    ok = subprocess.run([sys.executable, "-m", "peftqa.mlops.environment", "check", "cpu"], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and "matches" in ok.stdout, ok.stderr
    other = subprocess.run([sys.executable, "-m", "peftqa.mlops.environment", "check", "cuda"], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=120)
    assert other.returncode == 1, other.stdout
    assert "torch: locked 2.13.0, installed 2.13.0+cpu" in other.stderr
    assert "triton: locked" in other.stderr and "installed nothing" in other.stderr


def test_runs_and_served_models_name_the_lock():
    """Every run's tags (and so every training's resolved config) carry the installed lock; a served model's
    requirements pin the lock's versions (torch by its public version, which its CPU and CUDA builds share)."""
    tags = tracking.run_tags("train@lora", "m", "encoder", "lora", "stages/train.py")
    lock = environment.lock_path("cpu")
    assert tags["env.lock"] == "cpu" and tags["env.matches_lock"] == "true"
    assert tags["env.lock_sha256"] == sha256_file(lock)
    pins = environment.read_pins(lock)
    specs = serving.requirements()
    assert specs[0] == "torch==2.13.0"
    assert all(spec == f"{name}=={pins[environment.normalize(name)]}" for name, spec in
               ((s.split("==")[0], s) for s in specs[1:]))


def test_make_install_torch_cuda_syncs_the_cuda_lock_and_records_it():
    """The GPU path, as a dry run (the CUDA build is a few GB): `make install TORCH=cuda` syncs requirements/cuda.txt
    (with uv itself) into .venv, records the cuda variant, and leaves a stamp of its own, so switching back to cpu
    reinstalls."""
    dry = subprocess.run(["make", "-n", "-C", str(REPO_ROOT), "install", "TORCH=cuda"], capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    sync = "pip sync --quiet --python .venv/bin/python --compile-bytecode requirements/cuda.txt requirements/tools.txt"
    assert sync in dry.stdout
    assert "peftqa.mlops.environment record cuda" in dry.stdout and "touch .venv/.installed-cuda" in dry.stdout
