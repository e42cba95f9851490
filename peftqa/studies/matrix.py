"""The method matrix (source `matrix`): peftqa/methods/support.py, the family x method data test_learning runs, with
the method registry: which method learns, fails to learn or is refused on which family, at which recipe. Its folder
is code, committed with the change that made it: no run is copied in, and its provenance is git's.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path
from types import ModuleType

from peftqa.report.tables import markdown_table
from peftqa.studies.shape import Study

MATRIX_DIR = Path("peftqa/methods")


def read_matrix(folder: Path) -> ModuleType:
    """peftqa/methods/support.py, loaded by path from the folder rendered (the docs check renders copies)."""
    path = folder / "support.py"
    spec = importlib.util.spec_from_file_location("method_support", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def matrix_cell(matrix: ModuleType, family: str, method: str) -> str:
    if (family, method) in matrix.REFUSED:
        return f"refused: {matrix.REFUSED[family, method][1]}"
    lr, epochs = matrix.RECIPES[family][method]
    recipe = f"lr {lr:g}, {epochs} epochs"
    return f"xfail ({recipe})" if (family, method) in matrix.CANNOT_LEARN else f"learns ({recipe})"


def matrix_table(matrix: ModuleType) -> str:
    families = list(matrix.KINDS)
    header = ["method", *(f"{family} ({kind})" for family, kind in matrix.KINDS.items())]
    rows = [[f"`{method}`", *(matrix_cell(matrix, family, method) for family in families)]
            for method in matrix.TRAINED_METHODS]
    return markdown_table(header, rows)


def methods_table(matrix: ModuleType) -> str:
    """One row per registered method: its paper, what it trains, its knobs, where it comes from and the families
    the matrix shows it serving."""
    from peftqa.methods import registry as methods
    from peftqa.methods.shared import build_no_adapter

    def knobs(entry: methods.Method) -> str:
        names = [f.name for f in dataclasses.fields(entry.knobs) if f.name not in ("lr", "head_lr")]
        return ", ".join(f"`{name}`" for name in names) or "(lr only)"

    def source(entry: methods.Method) -> str:
        if entry.native is not None:
            return "peftqa (native)"
        return "peftqa (no adapter)" if entry.build is build_no_adapter else "peft"

    def serves(name: str) -> str:
        if name not in matrix.TRAINED_METHODS:
            return "all"
        return ", ".join(family for family in matrix.KINDS if (family, name) not in matrix.REFUSED)

    rows = [[f"`{name}`", entry.paper or "", entry.describe(has_head=True).split(": ", 1)[-1], knobs(entry),
             source(entry), serves(name)] for name, entry in methods.REGISTRY.items()]
    return markdown_table(["method", "paper", "what trains", "knobs (besides lr, head_lr)", "from", "families"], rows)


MATRIX = Study(name="matrix", folder=MATRIX_DIR, read=read_matrix, provenance=None,
               blocks={"table": matrix_table, "methods": methods_table}, copy_in=None)
