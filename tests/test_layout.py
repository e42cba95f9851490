"""The layout rules of the house, one test each, over the library (peftqa/) and the DVC stages (stages/):
- nothing there imports from `stages` (a stage is an entry point, never a library; tests may import stages);
- no import circles among those files;
- no file over 400 lines, no function over 60;
- no duplicated code (a run of 6 or more normalised lines that stands twice);
- stages/ holds exactly dvc.yaml's stages, each stage running the module named like it;
- `import peftqa` stays light: it does not import torch;
- the top level shows the architecture: at most MAX_TOP_LEVEL modules beside the subpackages, no two modules under
  peftqa/ share a file name, and docs/contributing.md's layout names every subpackage with its one-line concern.
Each checker is a function of a root folder, and each test has a negative control that runs the checker on a small
synthetic tree in tmp_path and sees it fail, so a checker that cannot fail does not pass silently.
"""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import yaml
from test_dvc_deps import ROOT, import_nodes, import_targets, module_file

CHECKED = ("peftqa", "stages")  # the folders the rules hold for
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60  # a def's lines, from its `def` line (decorators excluded) to its last line
MIN_DUPLICATE_LINES = 6  # as the `duplicates` command's default
MAX_TOP_LEVEL = 8  # modules directly in peftqa/ (its __init__.py and __main__.py counted)
HEAVY_MODULES = ("torch",)  # what `import peftqa` must not import: seconds to load, and the package face is cheap
LONE_PUNCTUATION = re.compile(r"[\s()\[\]{}:,;.]*")  # `)`, `],`, `}):` ... : a line that says nothing by itself
DUPLICATES_ROW = re.compile(r"^D\d+ (\S+):(\d+)-(\d+) ~ (\S+):(\d+)-(\d+)")  # `D1 a.py:10-24 ~ b.py:40-54 shape`


def checked_files(root: Path, folders: tuple[str, ...] = CHECKED) -> list[Path]:
    return sorted(path for folder in folders for path in (root / folder).rglob("*.py"))


def relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


# -----------------------------------------------------------------------------
# a. nothing imports from stages


def imports_of_stages(root: Path) -> list[str]:
    """`file: module` for every import statement (anywhere in the file) that names stages or a stages module."""
    found = []
    for path in checked_files(root):
        for target in sorted(import_targets(path, root, module_level_only=False)):
            if target == "stages" or target.startswith("stages."):
                found.append(f"{relative(path, root)}: {target}")
    return found


def test_nothing_under_peftqa_or_stages_imports_from_stages():
    found = imports_of_stages(ROOT)
    assert not found, "a stage is an entry point, not a library: move what these import into peftqa/\n" + "\n".join(
        found)


def test_the_stages_import_check_sees_every_kind_of_import(tmp_path):
    write_tree(tmp_path, {
        "stages/__init__.py": "", "stages/train.py": "", "stages/curves.py": "",
        "stages/report.py": "def main():\n    from stages.curves import read\n",
        "peftqa/__init__.py": "", "peftqa/a.py": "if TYPE_CHECKING:\n    import stages.train\n",
        "peftqa/b.py": "from stages import train\n", "peftqa/c.py": "from . import a\nimport os\n",
    })
    assert imports_of_stages(tmp_path) == ["peftqa/a.py: stages.train", "peftqa/b.py: stages.train",
                                           "stages/report.py: stages.curves"]


# -----------------------------------------------------------------------------
# b. no import circles


def import_graph(root: Path) -> dict[str, set[str]]:
    """{file: the files it imports}, every import statement counted (type-only and inside functions too), at file
    level: `from a.b import c` -> a/b/c.py when that is a module, else a/b/__init__.py; `import a.b` -> a/b.py."""
    graph = {}
    for path in checked_files(root):
        files = {module_file(target, root) for target in import_targets(path, root, module_level_only=False)}
        graph[relative(path, root)] = {relative(file, root) for file in files if file and file != path}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one file: each is a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def test_no_import_circles():
    circles = strongly_connected(import_graph(ROOT))
    assert not circles, f"{len(circles)} import circle(s) (counting type-only and function-level imports):\n" + (
        "\n".join(" <-> ".join(files) for files in circles))


def test_the_circle_check_finds_a_face_and_its_submodule(tmp_path):
    write_tree(tmp_path, {
        "peftqa/__init__.py": "",
        "peftqa/fam/__init__.py": "from peftqa.fam.load import load\n",
        "peftqa/fam/load.py": "def load():\n    from peftqa.fam import helper\n",  # the face, not a submodule
        "peftqa/x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from peftqa import y\n",
        "peftqa/y.py": "import peftqa.x\n",
        "peftqa/z.py": "from peftqa import x\n",  # imports into a circle, is not in one
        "stages/__init__.py": "",
    })
    assert strongly_connected(import_graph(tmp_path)) == [["peftqa/fam/__init__.py", "peftqa/fam/load.py"],
                                                          ["peftqa/x.py", "peftqa/y.py"]]


# -----------------------------------------------------------------------------
# c. small files, short functions


def oversized(root: Path) -> list[str]:
    """Files over MAX_FILE_LINES lines and functions (any nesting) over MAX_FUNCTION_LINES."""
    found = []
    for path in checked_files(root):
        text = path.read_text(encoding="utf-8")
        if len(text.splitlines()) > MAX_FILE_LINES:
            found.append(f"{relative(path, root)}: {len(text.splitlines())} lines (at most {MAX_FILE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{relative(path, root)}:{node.lineno} {node.name}: {length} lines "
                                 f"(at most {MAX_FUNCTION_LINES})")
    return found


def test_files_and_functions_are_small():
    found = oversized(ROOT)
    assert not found, "\n".join(found)


def test_the_size_check_sees_a_long_file_and_a_long_nested_function(tmp_path):
    body = "".join(f"        x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    write_tree(tmp_path, {
        "peftqa/long.py": "x = 1\n" * (MAX_FILE_LINES + 1),
        "peftqa/nested.py": f"class A:\n    def outer(self):\n{body}\n    def fits(self):\n        pass\n",
        "stages/fits.py": "@decorator\ndef f():\n" + "    x = 1\n" * (MAX_FUNCTION_LINES - 1),
    })
    assert oversized(tmp_path) == [f"peftqa/long.py: {MAX_FILE_LINES + 1} lines (at most {MAX_FILE_LINES})",
                                   f"peftqa/nested.py:2 outer: {MAX_FUNCTION_LINES + 1} lines "
                                   f"(at most {MAX_FUNCTION_LINES})"]


# -----------------------------------------------------------------------------
# d. no duplicated code


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) for the lines that count: stripped, white space folded; blank lines, comment-only lines,
    the lines of import statements (all of a parenthesised one) and lone punctuation left out."""
    text = path.read_text(encoding="utf-8")
    imports = {n for node in import_nodes(ast.parse(text), False) for n in range(node.lineno, node.end_lineno + 1)}
    lines = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = " ".join(line.split())
        if number not in imports and not line.startswith("#") and not LONE_PUNCTUATION.fullmatch(line):
            lines.append((number, line))
    return lines


def duplicated_runs(root: Path) -> list[str]:
    """`a.py:3-12 ~ b.py:40-49 (6 lines)` for every longest run of MIN_DUPLICATE_LINES or more code lines that
    stands twice, in one file or two (two places of one file may not overlap)."""
    files = {relative(path, root): code_lines(path) for path in checked_files(root)}
    places = defaultdict(list)  # a window of lines -> [(file, index of its first line)]
    for name, lines in files.items():
        for start in range(len(lines) - MIN_DUPLICATE_LINES + 1):
            places[tuple(text for _, text in lines[start:start + MIN_DUPLICATE_LINES])].append((name, start))
    pairs = {(a, b) for found in places.values() for i, a in enumerate(found) for b in found[i + 1:]
             if a[0] != b[0] or b[1] - a[1] >= MIN_DUPLICATE_LINES}
    runs = []
    for (file_a, a), (file_b, b) in sorted(pairs):
        if ((file_a, a - 1), (file_b, b - 1)) in pairs:
            continue  # inside a longer run, reported from its start
        length = next(k for k in range(1, 10**6) if ((file_a, a + k), (file_b, b + k)) not in pairs)
        last = length + MIN_DUPLICATE_LINES - 2
        runs.append(f"{file_a}:{files[file_a][a][0]}-{files[file_a][a + last][0]} ~ "
                    f"{file_b}:{files[file_b][b][0]}-{files[file_b][b + last][0]} ({last + 1} lines)")
    return runs


def duplicates_command_rows(root: Path, output: str) -> list[str]:
    """The rows of `duplicates` output whose two sides both lie in CHECKED, less those that are import lists: a
    side with fewer than MIN_DUPLICATE_LINES code lines once the import statements are taken out (the command
    passes over import lines, but reads the names of a parenthesised import as code)."""
    rows = []
    for line in output.splitlines():
        match = DUPLICATES_ROW.match(line)
        if match and all(side.split("/")[0] in CHECKED for side in (match[1], match[4])):
            sides = [(match[1], int(match[2]), int(match[3])), (match[4], int(match[5]), int(match[6]))]
            if all(sum(first <= n <= last for n, _ in code_lines(root / name)) >= MIN_DUPLICATE_LINES
                   for name, first, last in sides):
                rows.append(line)
    return rows


def check_duplicates_output(output: str) -> None:
    """Fail when the command's output is not what duplicates_command_rows reads: its first line counts the pairs,
    and every pair it lists is a row the pattern matches."""
    header = re.match(r"(\d+) pairs? of places|no duplicates", output)
    assert header, f"`duplicates` printed an unknown first line: {output.splitlines()[:1]}"
    rows = [line for line in output.splitlines() if DUPLICATES_ROW.match(line)]
    assert len(rows) == min(int(header[1] or 0), 200), f"`duplicates` rows not read: {output[:500]}"
    assert "incomplete:" not in output, f"`duplicates` did not read the whole tree: {output[-500:]}"


def test_no_duplicated_code():
    found = duplicated_runs(ROOT)
    if shutil.which("duplicates"):  # CI machines may lack it: then the stdlib checker above runs alone
        command = ["duplicates", "--repo", str(ROOT), "--most", "200", "--seconds", "60"]
        output = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
        check_duplicates_output(output)
        found += [f"duplicates: {row}" for row in duplicates_command_rows(ROOT, output)]
    assert not found, "the same code stands twice: keep one and call it from both places\n" + "\n".join(found)


def test_the_duplicate_checks_see_a_repeated_run(tmp_path):
    shared = "".join(f"total = total + values[{i}]  # step {i}\n" for i in range(MIN_DUPLICATE_LINES))
    write_tree(tmp_path, {
        "peftqa/a.py": "import os\n\ndef f(values):\n    total = 0\n" + shared.replace("total", "    total"),
        "stages/b.py": "from peftqa.a import (\n    f,\n)\n\n" + shared + "\n#\n[]\n" + shared,
        "peftqa/short.py": shared.splitlines(keepends=True)[0] * (MIN_DUPLICATE_LINES - 1),
    })
    assert duplicated_runs(tmp_path) == ["peftqa/a.py:5-10 ~ stages/b.py:5-10 (6 lines)",
                                         "peftqa/a.py:5-10 ~ stages/b.py:14-19 (6 lines)",
                                         "stages/b.py:5-10 ~ stages/b.py:14-19 (6 lines)"]
    output = ("2 pairs of places (3 files read), each sharing runs of 6 or more identical or same-shape lines\n"
              "D1 peftqa/a.py:5-10 ~ stages/b.py:14-19\nD2 peftqa/a.py:1-6 ~ stages/b.py:1-6 shape\n")
    check_duplicates_output(output)
    assert duplicates_command_rows(tmp_path, output) == ["D1 peftqa/a.py:5-10 ~ stages/b.py:14-19"]  # D2: imports


# -----------------------------------------------------------------------------
# e. stages/ is dvc.yaml's stages


def stage_mismatches(root: Path) -> list[str]:
    """What differs between stages/ and dvc.yaml: modules no stage runs, stages whose module is missing, and stages
    whose command does not run `python -m stages.<its own name>` (a foreach stage's with ${item} after it)."""
    found = []
    stages = yaml.safe_load((root / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    run = set()
    for name, stage in stages.items():
        command = str(stage.get("do", stage).get("cmd", ""))
        run |= set(re.findall(r"python -m stages\.(\w+)", command))
        expected = rf"python -m stages\.{name}" + (r" \$\{item\}" if "foreach" in stage else "") + r"( .*)?"
        if not re.fullmatch(expected, command):
            found.append(f"stage {name}: cmd `{command}` does not run `python -m stages.{name}"
                         + (" ${item}`" if "foreach" in stage else "`"))
    modules = {path.stem for path in (root / "stages").glob("*.py")} - {"__init__"}
    found += [f"stages/{module}.py: no dvc.yaml stage runs it" for module in sorted(modules - run)]
    found += [f"stages/{module}.py: a dvc.yaml command runs it, but it is missing" for module in sorted(run - modules)]
    found += [f"{relative(path.parent, root)}/: stages/ holds modules only, no packages"
              for path in sorted((root / "stages").glob("*/*.py"))]
    return found


def test_stages_holds_exactly_the_dvc_stages():
    found = stage_mismatches(ROOT)
    assert not found, "\n".join(found)


def test_the_stage_check_sees_strays_and_misnamed_commands(tmp_path):
    dvc = {"stages": {"prepare": {"cmd": "python -m stages.prepare"},
                      "train": {"foreach": ["a"], "do": {"cmd": "python -m stages.train ${item}"}},
                      "evaluate": {"foreach": ["a"], "do": {"cmd": "python -m stages.evaluate"}},
                      "score": {"cmd": "python -m stages.scoring --all"}}}
    write_tree(tmp_path, {"dvc.yaml": yaml.safe_dump(dvc), "stages/__init__.py": "", "stages/prepare.py": "",
                          "stages/train.py": "", "stages/evaluate.py": "", "stages/helpers.py": "",
                          "stages/sub/x.py": ""})
    assert stage_mismatches(tmp_path) == [
        "stage evaluate: cmd `python -m stages.evaluate` does not run `python -m stages.evaluate ${item}`",
        "stage score: cmd `python -m stages.scoring --all` does not run `python -m stages.score`",
        "stages/helpers.py: no dvc.yaml stage runs it",
        "stages/scoring.py: a dvc.yaml command runs it, but it is missing",
        "stages/sub/: stages/ holds modules only, no packages"]


# -----------------------------------------------------------------------------
# f. the package face is light


def heavy_imports(package: str, cwd: Path, heavy: tuple[str, ...] = HEAVY_MODULES) -> list[str]:
    """The modules of `heavy` that `import <package>` loads, in a fresh interpreter started in cwd."""
    code = f"import sys, {package}; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"`import {package}` failed:\n{result.stderr[-2000:]}"
    return [name for name in result.stdout.strip().split(",") if name]


def test_import_peftqa_is_light():
    assert heavy_imports("peftqa", ROOT) == []


def test_the_light_import_check_sees_a_heavy_face(tmp_path):
    write_tree(tmp_path, {"face/__init__.py": "from face import inner\n", "face/inner.py": "import heavy\n",
                          "heavy.py": ""})
    assert heavy_imports("face", tmp_path, heavy=("heavy", "torch")) == ["heavy"]


# -----------------------------------------------------------------------------
# g. the top level shows the architecture


def layout_problems(root: Path, guide: str = "docs/contributing.md") -> list[str]:
    """Too many modules at peftqa/'s top level, two modules of one file name (package faces and __main__.py aside),
    and subpackages that the guide's layout block does not list as `  <name>/  <its concern>`."""
    package = root / "peftqa"
    found = []
    top = sorted(path.name for path in package.glob("*.py"))
    if len(top) > MAX_TOP_LEVEL:
        found.append(f"peftqa/ holds {len(top)} modules at its top level (at most {MAX_TOP_LEVEL}): {', '.join(top)}")
    by_name = defaultdict(list)
    for path in sorted(package.rglob("*.py")):
        if path.name not in ("__init__.py", "__main__.py"):
            by_name[path.name].append(relative(path, root))
    found += [f"{name}: {' and '.join(paths)} share a file name" for name, paths in by_name.items() if len(paths) > 1]
    text = (root / guide).read_text(encoding="utf-8") if (root / guide).is_file() else ""
    for folder in sorted(path.parent for path in package.glob("*/__init__.py")):
        if not re.search(rf"^  {folder.name}/ +\S", text, re.M):
            found.append(f"peftqa/{folder.name}/: {guide}'s layout does not state its concern")
    return found


def test_the_top_level_shows_the_architecture():
    found = layout_problems(ROOT)
    assert not found, "\n".join(found)


def test_the_layout_check_sees_a_crowded_top_a_shared_name_and_an_unlisted_package(tmp_path):
    files = {f"peftqa/m{i}.py": "" for i in range(MAX_TOP_LEVEL + 1)}
    files.update({"peftqa/a/__init__.py": "", "peftqa/a/io.py": "", "peftqa/b/__init__.py": "", "peftqa/b/io.py": "",
                  "docs/contributing.md": "```\n  a/      what a does\n```\n"})
    write_tree(tmp_path, files)
    assert layout_problems(tmp_path) == [
        f"peftqa/ holds {MAX_TOP_LEVEL + 1} modules at its top level (at most {MAX_TOP_LEVEL}): "
        + ", ".join(sorted(f"m{i}.py" for i in range(MAX_TOP_LEVEL + 1))),
        "io.py: peftqa/a/io.py and peftqa/b/io.py share a file name",
        "peftqa/b/: docs/contributing.md's layout does not state its concern"]


def write_tree(root: Path, files: dict[str, str]) -> None:
    """A synthetic tree for a negative control: {relative path: text}."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
