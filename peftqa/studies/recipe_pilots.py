"""The recipe pilots (sources `pilot` and `official-pilot`): a committed grid run as a few short DVC experiments,
and the table of their val scores (peftqa.studies.pilot).

- `pilot`: reports/smollm2-pilot/, the first SmolLM2 study's pilot: its table.csv;
- `official-pilot`: reports/smollm2-official-pilot/, the decisive study's pilot, with phases: its tables and the
  choices the full run takes.
No finished run is copied in whole: `peftqa pilot run` copies each of the pilot's runs into runs/<run>/ as it
finishes (through peftqa.studies.shape.copy_run), and `peftqa pilot table` writes the tables from those copies.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from peftqa.studies.pilot import (
    PilotGrid,
    format_settings,
    format_table,
    full_run_settings,
    load_pilot_grid,
    pilot_markdown,
)
from peftqa.studies.run_copy import read_file
from peftqa.studies.shape import Study

PILOT_DIR = Path("reports/smollm2-pilot")
OFFICIAL_PILOT_DIR = Path("reports/smollm2-official-pilot")  # the decisive study's pilot, with phases


def read_pilot(root: Path) -> pd.DataFrame:
    return read_file(root, "table.csv", pd.read_csv)


def read_official_pilot(root: Path) -> tuple[PilotGrid, Path]:
    return load_pilot_grid(root / "grid.yaml"), root


def official_pilot_choices(pilot: tuple[PilotGrid, Path]) -> str:
    return format_settings(full_run_settings(*pilot))


PILOT = Study(name="pilot", folder=PILOT_DIR, read=read_pilot, blocks={"table": format_table},
              provenance=None, copy_in=None)  # its README says how it ran
OFFICIAL_PILOT = Study(name="official-pilot", folder=OFFICIAL_PILOT_DIR, read=read_official_pilot,
                       blocks={"tables": lambda pilot: pilot_markdown(*pilot), "choices": official_pilot_choices},
                       provenance=None, copy_in=None)  # its README and run.json say how it ran
