"""The `peftqa` command: the project's tools as subcommands (the DVC stages run as `python -m stages.<stage>`).

Each subcommand is a module of this package with a `main(args)`. Only the chosen one is imported, so `peftqa --help`
and a mistyped subcommand answer at once, without importing torch, transformers or MLflow.

Usage:   peftqa <subcommand> [args] [--debug]   (--debug: a PeftqaError shows its traceback)
         peftqa <subcommand> --help             (its options)
         python -m peftqa ...                   (the same, without the console script on PATH)
"""
from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

SUBCOMMANDS = {  # subcommand: the module of this package whose main(args) it runs (named apart from the
    # library module it drives where they would share a file name: cli/pilot_run.py runs peftqa/studies/pilot.py)
    "predict": "predict",
    "register": "register",
    "bench": "bench",
    "bench-reference": "bench_reference",
    "bench-cpu": "bench_cpu",
    "sweep": "sweep",
    "ablation": "ablation_table",
    "clean": "clean",
    "probe": "probe_truncation",
    "pilot": "pilot_run",
    "frontier": "frontier_run",
    "docs": "docs_render",
}
# called directly, not through peftqa.stops.run_cli: it raises no PeftqaError, and needs only torch, transformers
# and peft
STANDALONE = {"bench-reference"}
USAGE = "usage: peftqa <subcommand> [args] [--debug]"


def describe_subcommand(name: str) -> str:
    """The first line of the subcommand's module docstring, read from its source (importing it would load torch)."""
    source = Path(__file__).with_name(f"{SUBCOMMANDS[name]}.py").read_text(encoding="utf-8")
    return (ast.get_docstring(ast.parse(source)) or "").splitlines()[0]


def format_subcommands() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [f"  {name:<{width}}  {describe_subcommand(name)}" for name in SUBCOMMANDS]
    return "\n".join(["subcommands:", *lines, "", "`peftqa <subcommand> --help` lists a subcommand's options."])


def run_subcommand(name: str, args: list[str]) -> None:
    """Import the subcommand's module and run its main(args), through run_cli unless it is STANDALONE."""
    module = importlib.import_module(f"{__name__}.{SUBCOMMANDS[name]}")
    if name in STANDALONE:
        module.main(args)
        return
    from peftqa.stops import run_cli

    run_cli(module.main, args)


def main(argv: list[str] | None = None) -> None:
    """`peftqa [subcommand] [args]`; argv is what follows `peftqa` (default: sys.argv[1:]). Exits 2 on an unknown
    subcommand; a bare `peftqa` lists the subcommands."""
    args = sys.argv[1:] if argv is None else list(argv)
    words = [arg for arg in args if arg != "--debug"]
    if not words:
        print(format_subcommands())
    elif words[0] in ("-h", "--help"):
        print(f"{USAGE}\n\n{__doc__.splitlines()[0]}\n\n{format_subcommands()}")
    elif words[0] not in SUBCOMMANDS:
        print(f"{USAGE}\npeftqa: error: unknown subcommand '{words[0]}'; choose one of {', '.join(SUBCOMMANDS)}",
              file=sys.stderr)
        raise SystemExit(2)
    else:
        rest = list(args)
        rest.remove(words[0])  # its first occurrence: the subcommand; --debug stays for run_cli
        run_subcommand(words[0], rest)
