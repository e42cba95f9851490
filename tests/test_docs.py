"""The docs' generated blocks: the committed ones match their outputs, a changed output makes the check fail (and
re-rendering mends it), and malformed markers or a shortened study get errors that name the file and the line."""
from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from peftqa.errors import PeftqaError
from peftqa.studies import docs, run_copy, smollm2
from peftqa.studies.smollm2 import SMOLLM2_DIR

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_studies():
    docs._read.cache_clear()  # each test reads its own copy of a study
    yield
    docs._read.cache_clear()


DOC_INPUTS = ("README.md", "dvc.yaml", "params.yaml", "docs", "reports", "models", "data/processed",
              "peftqa/methods/support.py")


def committed_copy(source: Path, dest: Path) -> Path:
    """What the docs read, as git's index has it (the last commit, plus what is staged): README.md, docs/,
    params.yaml and every committed output (the default run's, the studies', the benches'); dvc.yaml marks the
    project root. The working tree is not read: a user's own `make run` rewrites the default run's timings and MLflow
    ids there, and `peftqa docs` may re-render the blocks from them, and neither is what the check guards."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--", *DOC_INPUTS], cwd=source, capture_output=True,
                            check=True).stdout
    subprocess.run(["git", "checkout-index", "-z", "--stdin", f"--prefix={dest}/"], cwd=source, input=listed,
                   check=True)
    return dest


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return committed_copy(ROOT, tmp_path / "project")


def block_bodies(text: str) -> dict[str, str]:
    """{block name: its body} of a doc file's generated blocks."""
    found = re.findall(r"^<!-- peftqa:begin (\S+) -->\n(.*?)^<!-- peftqa:end \1 -->$", text, re.M | re.S)
    return dict(found)


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    edit(data)
    path.write_text(json.dumps(data), encoding="utf-8")


def edit_text(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{path} no longer holds {old!r}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def edit_csv(path: Path, column: str, value: object) -> None:
    frame = pd.read_csv(path)
    frame.loc[frame.index[-1], column] = value
    frame.to_csv(path, index=False)


def edit_primary(path: Path) -> None:
    """Every paired-bootstrap macro-F1 interval against base_calibrated ends at 0.987654: the primary comparison's too,
    whichever tuned method val picked."""
    frame = pd.read_csv(path)
    rows = (frame["reference"] == "base_calibrated") & (frame["test"] == "paired_bootstrap") & (
        frame["metric"] == "macro_f1")
    frame.loc[rows, "ci_high"] = 0.987654
    frame.to_csv(path, index=False)


# one committed output per source, and a block that renders it: changing the output must change the block
EDITS = {
    "default:performance": lambda root: edit_json(root / "reports/eval/lora/metrics_test.json",
                                                  lambda m: m.update(accuracy=0.987654)),
    "default:references": lambda root: edit_json(root / "reports/references/choices.json",
                                                 lambda c: c["tfidf_lr"]["chosen"].update(c=123.0)),
    "cv5:cv": lambda root: edit_csv(root / "reports/cv5/cv_folds.csv", "accuracy", 0.987654),
    "cv5:cv-comparisons": lambda root: edit_csv(root / "reports/cv5/cv_stats.csv", "ci_high", 0.987654),
    "seeds3:seeds": lambda root: edit_csv(root / "reports/seeds3/seeds_summary.csv", "accuracy_mean", 0.987654),
    "ablation:lora": lambda root: edit_csv(root / "reports/ablation/lora.csv", "test_accuracy", 0.987654),
    "pilot:table": lambda root: edit_csv(root / "reports/smollm2-pilot/table.csv", "val_accuracy", 0.987654),
    "measured:default": lambda root: edit_json(root / "reports/bench/default.json",
                                               lambda b: b["rows"][0].update(examples_per_s=987.654)),
    "measured:truncation": lambda root: edit_json(root / "reports/probe/truncation.json",
                                                  lambda t: t["rows"][-1].update(val_loss=9.87654)),
    "measured:reference": lambda root: edit_json(root / "reports/bench/reference_small_cpu.json",
                                                 lambda r: r["methods"][0].update(step_s_median=9.87654)),
    "methods-cv5:frontier": lambda root: edit_csv(root / "reports/methods-cv5/frontier.csv", "accuracy", 0.987654),
    "methods-cv5:grid": lambda root: edit_csv(root / "reports/methods-cv5/table.csv", "val_accuracy", 0.987654),
    "matrix:table": lambda root: edit_text(root / "peftqa/methods/support.py", '"lora": (1e-2, 4)',
                                           '"lora": (0.987654, 4)'),
    "measured:fresh-clone": lambda root: edit_json(root / "reports/bench/fresh_clone.json",
                                                   lambda r: r["steps"][0].update(outcome="0.987654 passed")),
    "measured:cpu-bf16-agreement": lambda root: edit_json(root / "reports/bench/cpu-bf16-agreement.json",
                                                          lambda r: r["rows"][0].update(macro_f1=0.987654)),
    "measured:cpu-bf16": lambda root: edit_json(root / "reports/bench/cpu-bf16.json",
                                                lambda r: r["rows"][0].update(items_per_s=987.654)),
    "official:primary": lambda root: edit_primary(root / "reports/smollm2-official/reports/stats/stats_eval_test.csv"),
    "official-pilot:tables": lambda root: edit_csv(
        root / "reports/smollm2-official-pilot/runs/run-1/models/prompt_tuning/history.csv", "val_accuracy", 0.987654),
}


def peftqa_docs(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DVC_ROOT", None)
    return subprocess.run([sys.executable, "-m", "peftqa", "docs", *args], cwd=project, env=env, capture_output=True,
                          text=True)


def test_committed_blocks_match_their_outputs(project: Path):
    stale = docs.stale_files(project)
    assert not stale, "run `peftqa docs`, then stage the docs:\n" + "".join(diff for _, diff in stale.values())
    texts = [path.read_text(encoding="utf-8") for path in docs.doc_files(project)]
    assert sum(text.count("<!-- peftqa:begin smollm2:") for text in texts) >= len(smollm2.SMOLLM2.renderers())


def test_a_user_s_own_run_does_not_fail_the_committed_check_but_a_committed_edit_does(tmp_path: Path):
    """After a user's `make run` the default run's timings differ in the working tree (and `peftqa docs` would
    re-render the timing blocks from them): the check reads git's index, so it still passes. The control: the same
    change read from the working tree fails it, and so does the change staged, or a hand edit of a staged block."""
    repo = committed_copy(ROOT, tmp_path / "repo")
    git = functools.partial(subprocess.run, cwd=repo, check=True, capture_output=True)
    git(["git", "init", "-q"])
    git(["git", "add", "-A"])
    git(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "committed"])
    summary = repo / "models/lora/train_summary.json"  # what a re-run rewrites: seconds, items/s, MLflow ids
    edit_json(summary, lambda s: s.update(train_seconds=s["train_seconds"] * 3 + 1))

    assert not docs.stale_files(committed_copy(repo, tmp_path / "committed"))
    assert docs.stale_files(repo), "the control: the working tree's own timings differ from the committed blocks"

    git(["git", "add", str(summary)])
    assert docs.stale_files(committed_copy(repo, tmp_path / "staged-output"))
    git(["git", "reset", "-q", "--hard"])
    assert not docs.stale_files(committed_copy(repo, tmp_path / "again"))
    edit_text(repo / "docs/results.md", "| lora |", "| lora (edited by hand) |")
    git(["git", "add", "docs/results.md"])
    assert docs.stale_files(committed_copy(repo, tmp_path / "staged-block"))


def test_a_changed_output_fails_the_check_and_rerendering_mends_it(project: Path):
    assert peftqa_docs(project, "--check").returncode == 0
    metrics_path = project / SMOLLM2_DIR / "reports/eval/lora/metrics_test.json"
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    metrics["accuracy"] = 0.987654
    metrics_path.write_text(json.dumps(metrics), encoding="utf-8")

    failed = peftqa_docs(project, "--check")
    assert failed.returncode == 1
    assert "docs/results.md" in failed.stderr and "peftqa docs" in failed.stderr
    assert "+| lora |" in failed.stdout and "0.988" in failed.stdout  # the diff shows the new row
    before = (project / "docs/results.md").read_text(encoding="utf-8")

    assert peftqa_docs(project).returncode == 0
    after = (project / "docs/results.md").read_text(encoding="utf-8")
    assert "0.988" in after and "0.988" not in before
    assert peftqa_docs(project, "--check").returncode == 0


def test_every_source_s_blocks_follow_their_outputs(project: Path):
    """Negative controls, one per source: edit one committed output each, and exactly the blocks that render it
    change, each showing the edited value."""
    committed = {name: body for path in docs.doc_files(project)
                 for name, body in block_bodies(path.read_text(encoding="utf-8")).items()}
    assert set(EDITS) <= set(committed), "a block these controls edit is missing from the docs"
    for edit in EDITS.values():
        edit(project)
    rendered = {name: body for path in docs.doc_files(project) for name, body in
                block_bodies(docs.render_text(path.read_text(encoding="utf-8"), project, path.name)).items()}
    for name in EDITS:
        assert rendered[name] != committed[name], f"{name} did not follow its edited output"
        assert re.search(r"0\.988|0\.987654|987\.65|9\.87|= 123\b", rendered[name]), name
    unchanged = {name for name in committed if name.split(":")[0] == "smollm2"}
    assert all(rendered[name] == committed[name] for name in unchanged)


def test_a_typed_result_outside_the_blocks_fails_the_check(project: Path):
    """The prose may read a table but not quote it: a result-like number or a commit outside every block and code
    block fails `--check` naming its file and line; the same number inside a code block, or a version, does not."""
    assert docs.typed_results(project) == []
    page = project / "docs/results.md"
    text = page.read_text(encoding="utf-8")
    page.write_text(text + "\n```\nprobe 0.643\n```\nFlan-T5 0.205M, torch 2.13.0, peft 0.21.2\n", encoding="utf-8")
    assert docs.typed_results(project) == []
    page.write_text(text + "\nThe probe scores 0.643 on test (commit `4ddfe1d`).\n", encoding="utf-8")
    line = len(text.splitlines()) + 2
    assert docs.typed_results(project) == [f"docs/results.md:{line}: 0.643", f"docs/results.md:{line}: `4ddfe1d`"]
    failed = peftqa_docs(project, "--check")
    assert failed.returncode == 1 and f"docs/results.md:{line}: 0.643" in failed.stderr


def test_a_broken_link_fails_the_check(project: Path):
    assert docs.broken_links(project) == []
    page = project / "docs/models.md"
    text = page.read_text(encoding="utf-8")
    page.write_text(text + "\nSee [gone](nothing.md), [a heading](gpu.md#no-such-heading) and [fine](gpu.md).\n",
                    encoding="utf-8")
    assert docs.broken_links(project) == ["docs/models.md: nothing.md (no such file)",
                                          "docs/models.md: gpu.md#no-such-heading (no such heading)"]
    assert peftqa_docs(project, "--check").returncode == 1


def test_the_smollm2_demo_is_the_study_s_own_command_cut_and_its_record_must_time_that_command(project: Path):
    """README's SmolLM2 commands come from the study's run.json: the demo is that command renamed and sliced, and
    demo.json, the record of a demo run, must have timed exactly it. The control: a record of another command (a
    demo whose settings changed since it was timed) is refused, naming the record."""
    run = json.loads((project / SMOLLM2_DIR / "run.json").read_text(encoding="utf-8"))
    rendered = docs.render_text("<!-- peftqa:begin smollm2:commands -->\n<!-- peftqa:end smollm2:commands -->\n",
                                project, "p.md")
    demo = smollm2.demo_command(run["command"])
    assert demo.startswith(f"dvc exp run -n {smollm2.DEMO_NAME} ") and demo.endswith(
        " ".join(f"-S {setting}" for setting in smollm2.DEMO_SETTINGS))
    flat = rendered.replace(" \\\n  ", " ")
    assert demo in flat and run["command"] in flat
    edit_json(project / SMOLLM2_DIR / smollm2.DEMO_JSON,
              lambda d: d.update(command=d["command"] + " -S train.epochs=2"))
    with pytest.raises(PeftqaError, match=r"reports/smollm2/demo.json records .*, not the demo of the study's command"):
        docs.render_text("<!-- peftqa:begin smollm2:commands -->\n<!-- peftqa:end smollm2:commands -->\n", project,
                         "p.md")


def test_a_protocol_copy_without_its_run_record_is_named(project: Path):
    (project / "reports/cv5/run.json").unlink()
    with pytest.raises(PeftqaError, match="reports/cv5: run.json is missing"):
        docs.render_text("<!-- peftqa:begin cv5:cv -->\n<!-- peftqa:end cv5:cv -->\n", project, "p.md")


def test_rendering_keeps_everything_outside_the_blocks(project: Path):
    text = "intro\n<!-- peftqa:begin smollm2:generate -->\nold\n<!-- peftqa:end smollm2:generate -->\noutro\n"
    rendered = docs.render_text(text, project, "page.md")
    assert rendered.startswith("intro\n<!-- peftqa:begin smollm2:generate -->\n| row |")
    assert rendered.endswith("<!-- peftqa:end smollm2:generate -->\noutro\n") and "old" not in rendered
    assert docs.render_text(rendered, project, "page.md") == rendered


@pytest.mark.parametrize(("text", "message"), [
    ("a\n<!-- peftqa:begin smollm2:nothing -->\n<!-- peftqa:end smollm2:nothing -->\n",
     "page.md:2: unknown block 'smollm2:nothing'"),
    ("<!-- peftqa:begin other:performance -->\n<!-- peftqa:end other:performance -->\n",
     "page.md:1: unknown block 'other:performance'"),
    ("<!-- peftqa:begin smollm2:speed -->\nx\n", "page.md:1: block 'smollm2:speed' has no end marker"),
    ("x\n\n<!-- peftqa:end smollm2:speed -->\n", "page.md:3: end of block 'smollm2:speed' without its begin"),
    ("<!-- peftqa:begin smollm2:speed -->\n<!-- peftqa:begin smollm2:generate -->\n",
     "page.md:2: block 'smollm2:generate' begins inside block 'smollm2:speed'"),
])
def test_malformed_markers_name_the_file_and_line(project: Path, text: str, message: str):
    with pytest.raises(PeftqaError, match=message.replace("(", r"\(").replace(")", r"\)")):
        docs.render_text(text, project, "page.md")


def test_a_shortened_study_is_refused_as_a_result(project: Path):
    params = project / SMOLLM2_DIR / "params.yaml"
    text = params.read_text(encoding="utf-8")
    assert "  limit_train: 0" in text
    params.write_text(text.replace("  limit_train: 0", "  limit_train: 64", 1), encoding="utf-8")
    with pytest.raises(PeftqaError, match="train.limit_train 64: a shortened run, not a result"):
        docs.render_text("<!-- peftqa:begin smollm2:speed -->\n<!-- peftqa:end smollm2:speed -->\n", project, "p.md")


def test_a_missing_study_file_is_named(project: Path):
    (project / SMOLLM2_DIR / "reports/stats/stats_eval_test.csv").unlink()
    with pytest.raises(PeftqaError, match="reports/stats/stats_eval_test.csv is missing"):
        docs.stale_files(project)


@pytest.mark.parametrize(("low", "high", "p_holm", "expected"), [
    (-0.05, 0.10, 0.40, "undecidable at this size (n=89)"),
    (0.0, 0.10, 0.40, "undecidable at this size (n=89)"),  # a CI touching 0 does not exclude it
    (0.01, 0.10, 0.01, "lift"),
    (0.01, 0.10, 0.20, "lift (suggestive only after Holm)"),
    (-0.20, -0.01, 0.001, "below"),
])
def test_the_answer_is_read_off_the_ci_alone(low: float, high: float, p_holm: float, expected: str):
    row = pd.Series({"ci_low": low, "ci_high": high, "p_holm": p_holm, "n": 89})
    assert run_copy.answer(row, 0.95) == expected
    assert run_copy.answer(row, 0.95, short=True) == expected.replace(" at this size (n=89)", "")
