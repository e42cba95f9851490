"""The `peftqa` command (peftqa/cli/__init__.py): a bare `peftqa` and `peftqa --help` list every subcommand with its
one-line description, `peftqa <sub> --help` is that subcommand's own help, an unknown subcommand fails naming the
valid ones, errors go through run_cli, `peftqa --help` imports no torch, and the Makefile's tool targets call it.
main() runs in-process; one subprocess runs the installed console script."""
from __future__ import annotations

import importlib
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from peftqa.cli import SUBCOMMANDS, main
from peftqa.errors import PeftqaError

REPO_ROOT = Path(__file__).resolve().parents[1]
CLI_DIR = REPO_ROOT / "peftqa/cli"
HEAVY = ("torch", "transformers", "peft", "mlflow", "dvc", "pandas")  # what listing the subcommands must not import


def description(name: str) -> str:
    return importlib.import_module(f"peftqa.cli.{SUBCOMMANDS[name]}").__doc__.splitlines()[0]


@pytest.mark.parametrize("argv", [[], ["--help"], ["-h"], ["--debug"]], ids=["bare", "--help", "-h", "--debug"])
def test_peftqa_lists_every_subcommand_with_its_description(capsys, argv):
    main(argv)  # returns: exit status 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert f"  {name} " in out and description(name) in out, name
    assert ("usage: peftqa <subcommand>" in out) == (argv in (["--help"], ["-h"]))


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_its_own_help(capsys, name):
    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: peftqa {name} ") and description(name) in " ".join(out.split())


def test_an_unknown_subcommand_fails_naming_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["bench_reference"])  # the module's name, not the subcommand's
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown subcommand 'bench_reference'" in err and all(name in err for name in SUBCOMMANDS)


def test_a_peftqa_error_is_one_line_and_exit_1_and_debug_raises_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("PEFTQA_DEBUG", raising=False)
    argv = ["sweep", "--grid", str(tmp_path / "grid.yaml"), "--dry-run"]
    saved = list(sys.argv)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 1 and sys.argv == saved
    grid = tmp_path / "grid.yaml"
    assert capsys.readouterr().err == f"error: {grid}: no sweep grid here; commit one before running the sweep\n"
    with pytest.raises(PeftqaError, match="no sweep grid here"):
        main(["--debug", *argv])
    assert sys.argv == saved


def test_python_m_peftqa_is_the_same_command(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["peftqa", "--help"])
    runpy.run_module("peftqa", run_name="__main__")
    assert "usage: peftqa <subcommand>" in capsys.readouterr().out


def test_every_module_of_peftqa_cli_is_a_subcommand_without_a_main_block():
    modules = sorted(path.stem for path in CLI_DIR.glob("*.py") if path.stem != "__init__")
    assert modules == sorted(SUBCOMMANDS.values())
    for module in modules:
        assert '__name__ == "__main__"' not in (CLI_DIR / f"{module}.py").read_text(encoding="utf-8"), module


def test_the_console_script_lists_the_subcommands_without_importing_torch():
    """The installed script (pyproject's peftqa = "peftqa.cli:main"), with Python's import log on stderr."""
    script = Path(sys.executable).parent / "peftqa"
    assert script.is_file(), f"{script}: no console script; run `make install`"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(f"  {name} " in result.stdout for name in SUBCOMMANDS)
    log = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    imported = {line.rsplit("|", 1)[-1].strip() for line in log}  # "import time: self | cumulative | module"
    assert "peftqa.cli" in imported
    assert not {module for module in imported if module.split(".")[0] in HEAVY}


def test_the_makefile_tool_targets_call_the_subcommands():
    dry_run = subprocess.run(["make", "-n", "-C", str(REPO_ROOT), "bench", "bench-reference", "sweep", "ablation",
                              "clean", "ABLATION_REV=abc1234"], capture_output=True, text=True, timeout=60)
    assert dry_run.returncode == 0, dry_run.stderr
    for command in ("peftqa bench", "peftqa bench-reference", "peftqa sweep",
                    "peftqa ablation --grid reports/ablation/grid.yaml --rev abc1234", "peftqa clean"):
        assert f".venv/bin/{command}\n" in dry_run.stdout, command
    assert "peftqa.cli" not in dry_run.stdout
    smollm2 = subprocess.run(["make", "-n", "-C", str(REPO_ROOT), "bench", "BENCH=smollm2"], capture_output=True,
                             text=True, timeout=60)
    assert "peftqa bench --items 16 --train-batches 3 --set model.name_or_path=smollm2-135m-instruct" in smollm2.stdout


def test_make_help_lists_every_target_and_an_unknown_bench_is_named():
    """`make help` (the default goal) lists every .PHONY target with its `##` text; `make bench BENCH=<typo>` stops
    before installing anything, naming the benches there are (it used to run the default bench silently)."""
    makefile = (REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    (phony,) = [line.split(":", 1)[1].split() for line in makefile.splitlines() if line.startswith(".PHONY:")]
    listed = subprocess.run(["make", "--no-print-directory", "-C", str(REPO_ROOT)], capture_output=True, text=True,
                            timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert sorted(line.split()[1] for line in listed.stdout.splitlines()) == sorted(phony)
    assert all(len(line.split()) > 3 for line in listed.stdout.splitlines())  # each with its description
    typo = subprocess.run(["make", "-C", str(REPO_ROOT), "bench", "BENCH=smolm2"], capture_output=True, text=True,
                          timeout=60)
    assert typo.returncode == 2 and "BENCH=smolm2 is not a bench: use one of smollm2" in typo.stderr, typo.stderr
    assert "uv" not in typo.stdout  # refused before `make install` ran
