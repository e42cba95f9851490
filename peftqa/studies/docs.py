"""Generated blocks in the docs: tables and verdicts rendered from committed outputs, never typed.

A block is a region of README.md or of a page under docs/ between two marker lines:

    <!-- peftqa:begin smollm2:performance -->
    ...rendered markdown...
    <!-- peftqa:end smollm2:performance -->

Its name is `<study>:<block>`: a committed study (STUDIES, each a peftqa.studies.shape.Study: its folder, its reader
and the blocks it renders) and one of its blocks.
`peftqa docs` rewrites every block from its study; `peftqa docs --check` renders them and fails, naming the file, the
line and the block, where a committed block differs from what its outputs give. The prose around a block may read it,
but quotes no number of its own.
"""
from __future__ import annotations

import difflib
import functools
import re
from pathlib import Path

from peftqa.errors import PeftqaError
from peftqa.studies.benches import MEASURED
from peftqa.studies.default_run import DEFAULT
from peftqa.studies.frontier import FRONTIER
from peftqa.studies.matrix import MATRIX
from peftqa.studies.official import OFFICIAL
from peftqa.studies.protocol_copies import CV5, SEEDS3
from peftqa.studies.recipe_pilots import OFFICIAL_PILOT, PILOT
from peftqa.studies.shape import Study
from peftqa.studies.smollm2 import SMOLLM2
from peftqa.studies.sweeps import ABLATION

# every committed study, by its name (a block name's prefix): a new study is its module, and one entry here
STUDIES: dict[str, Study] = {study.name: study for study in (
    SMOLLM2, DEFAULT, CV5, SEEDS3, ABLATION, PILOT, OFFICIAL_PILOT, OFFICIAL, MEASURED, MATRIX, FRONTIER)}
DOC_FILES = ("README.md", "docs/*.md")  # where blocks may sit, relative to the project root
MARKER = re.compile(r"^<!-- peftqa:(?P<kind>begin|end) (?P<name>\S+) -->$")
# a result as the pipeline prints it (0.643, 1.000): typed outside a block, it is a number no check keeps true
LINK = re.compile(r"\]\((?P<target>[^)\s#]*)(?:#(?P<anchor>[^)\s]+))?\)")  # a markdown link: [text](path#anchor)
TYPED_RESULT = re.compile(r"(?<![\w.-])[01]\.\d{3}(?![\w.])")
# a commit as a session types it (`4ddfe1d`): only a provenance line rendered from an output's record may name one
TYPED_COMMIT = re.compile(r"`(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}`")


def doc_files(root: Path) -> list[Path]:
    return sorted({path for pattern in DOC_FILES for path in root.glob(pattern) if path.is_file()})


@functools.lru_cache(maxsize=None)
def _read(name: str, folder: Path) -> object:
    return STUDIES[name].read(folder)


def render_block(root: Path, name: str, where: str) -> str:
    """The markdown of block `name` (`<study>:<block>`); `where` (file:line) names the marker in any error."""
    prefix, _, block = name.partition(":")
    study = STUDIES.get(prefix)
    renderers = study.renderers() if study else {}
    if block not in renderers:
        known = sorted(renderers) if study else sorted(f"{p}:…" for p in STUDIES)
        raise PeftqaError(f"{where}: unknown block '{name}'; a block is <study>:<block>, one of {known}")
    return renderers[block](_read(prefix, (root / study.folder).resolve())).strip("\n")


def render_text(text: str, root: Path, source: str) -> str:
    """`text` with every block's body replaced by its rendering; the markers and everything outside stay as they
    are. An end without its begin, a begin left open, or a block inside a block is an error naming the line."""
    out, open_name, open_line = [], None, 0
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        match = MARKER.match(line.rstrip("\n"))
        if match is None:
            if open_name is None:
                out.append(line)
            continue
        where = f"{source}:{number}"
        if match["kind"] == "begin":
            if open_name is not None:
                raise PeftqaError(f"{where}: block '{match['name']}' begins inside block '{open_name}' "
                                  f"(opened at line {open_line}); close that one first")
            open_name, open_line = match["name"], number
            out += [line, render_block(root, open_name, where) + "\n"]
        elif open_name != match["name"]:
            raise PeftqaError(f"{where}: end of block '{match['name']}' without its begin"
                              + (f" (block '{open_name}' is open)" if open_name else ""))
        else:
            out.append(line)
            open_name = None
    if open_name is not None:
        raise PeftqaError(f"{source}:{open_line}: block '{open_name}' has no end marker "
                          f"'<!-- peftqa:end {open_name} -->'")
    return "".join(out)


def stale_files(root: Path) -> dict[Path, tuple[str, str]]:
    """Each doc file whose blocks differ from their rendering: its rendered text, and a unified diff from the
    committed one."""
    stale = {}
    for path in doc_files(root):
        name = str(path.relative_to(root))
        text = path.read_text(encoding="utf-8")
        rendered = render_text(text, root, name)
        if rendered != text:
            diff = difflib.unified_diff(text.splitlines(keepends=True), rendered.splitlines(keepends=True),
                                        f"{name} (committed)", f"{name} (rendered)")
            stale[path] = (rendered, "".join(diff))
    return stale


def typed_results(root: Path) -> list[str]:
    """`file:line: text` for each result-like number (three decimals) or commit hash in the prose or tables of a doc
    file, outside its generated blocks and code blocks: a number or commit quoted there must come from a block."""
    found = []
    for path in doc_files(root):
        inside = fenced = False
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            match = MARKER.match(line)
            if match:
                inside = match["kind"] == "begin"
            elif line.startswith("```"):
                fenced = not fenced
            elif not (inside or fenced):
                found += [f"{path.relative_to(root)}:{number}: {m.group()}"
                          for pattern in (TYPED_RESULT, TYPED_COMMIT) for m in pattern.finditer(line)]
    return found


def heading_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lstrip("#").strip().lower()).replace(" ", "-")


def broken_links(root: Path) -> list[str]:
    """`file: link (why)` for each relative link of a doc file whose file, or whose heading in a markdown file, does
    not exist."""
    broken = []
    for path in doc_files(root):
        for match in LINK.finditer(path.read_text(encoding="utf-8")):
            target, anchor = match["target"], match["anchor"]
            if re.match(r"[a-z]+:", target):  # http:, mailto:: not checked here
                continue
            linked = (path.parent / target).resolve() if target else path
            where = f"{path.relative_to(root)}: {match.group()[2:-1]}"
            if not linked.exists():
                broken.append(f"{where} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in {
                    heading_anchor(line) for line in linked.read_text(encoding="utf-8").splitlines()
                    if line.startswith("#")}:
                broken.append(f"{where} (no such heading)")
    return broken
