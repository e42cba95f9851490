"""Render the generated blocks of README.md and docs/*.md from the committed outputs they cite (--check: only compare).

Every block between `<!-- peftqa:begin <study>:<block> -->` and `<!-- peftqa:end <study>:<block> -->` is rendered
from its study's folder (peftqa.studies.docs.STUDIES; e.g. smollm2 -> reports/smollm2/). Without --check the files
whose blocks changed are rewritten (atomically) and listed; with --check nothing is written, and a difference prints
its diff and exits 1. Run it from anywhere inside the project.

Usage: peftqa docs [--check]
"""
from __future__ import annotations

import argparse
import sys

from peftqa.errors import PeftqaError
from peftqa.files import project_root, write_text_atomic
from peftqa.studies.docs import broken_links, doc_files, stale_files, typed_results


def main(args: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="peftqa docs", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 with a diff where a block differs from its rendering")
    options = parser.parse_args(args)
    root = project_root()
    stale = stale_files(root)
    if options.check:
        typed, broken = typed_results(root), broken_links(root)
        if typed:
            raise PeftqaError(f"docs: {len(typed)} result-like number(s) or commit(s) typed outside a generated block ("
                              + "; ".join(typed) + "): render them in a block from the output they come from, or "
                              "drop them")
        if broken:
            raise PeftqaError(f"docs: {len(broken)} broken link(s): " + "; ".join(broken))
        if stale:
            sys.stdout.write("".join(diff for _, diff in stale.values()))
            raise PeftqaError(f"docs: {len(stale)} file(s) hold blocks that differ from their committed outputs: "
                              f"{', '.join(str(p.relative_to(root)) for p in stale)}; run `peftqa docs` to "
                              "re-render them (and review the diff above)")
        print(f"docs: every block of {len(doc_files(root))} file(s) matches its outputs")
        return
    for path, (rendered, _) in stale.items():
        write_text_atomic(path, rendered)
        print(f"docs: re-rendered {path.relative_to(root)}")
    if not stale:
        print("docs: nothing to re-render")
