"""The docs' generated blocks: the committed ones match their outputs, a changed output makes the check fail (and
re-rendering mends it), and malformed markers or a shortened study get errors that name the file and the line."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from peftqa import docs, study
from peftqa.common import PeftqaError
from peftqa.study import SMOLLM2_DIR

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_studies():
    docs._read.cache_clear()  # each test reads its own copy of a study
    yield
    docs._read.cache_clear()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of what the docs read: README.md, docs/ and the committed study; dvc.yaml marks the project root."""
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copytree(ROOT / SMOLLM2_DIR, tmp_path / SMOLLM2_DIR)
    return tmp_path


def peftqa_docs(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DVC_ROOT", None)
    return subprocess.run([sys.executable, "-m", "peftqa", "docs", *args], cwd=project, env=env, capture_output=True,
                          text=True)


def test_committed_blocks_match_their_outputs():
    stale = docs.stale_files(ROOT)
    assert not stale, "run `peftqa docs`:\n" + "".join(diff for _, diff in stale.values())
    texts = [path.read_text(encoding="utf-8") for path in docs.doc_files(ROOT)]
    assert sum(text.count("<!-- peftqa:begin smollm2:") for text in texts) >= len(docs.BLOCKS)


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


def test_rendering_keeps_everything_outside_the_blocks(project: Path):
    text = "intro\n<!-- peftqa:begin smollm2:generate -->\nold\n<!-- peftqa:end smollm2:generate -->\noutro\n"
    rendered = docs.render_text(text, project, "page.md")
    assert rendered.startswith("intro\n<!-- peftqa:begin smollm2:generate -->\n| method |")
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
    assert study.answer(row, 0.95) == expected
    assert study.answer(row, 0.95, short=True) == expected.replace(" at this size (n=89)", "")


def test_the_exact_mcnemar_floor():
    assert study.mcnemar_exact_floor(0.05) == 6  # 2 * 0.5**5 = 0.0625 > 0.05 >= 2 * 0.5**6
    assert study.mcnemar_exact_floor(0.0625) == 5
    assert study.mcnemar_exact_floor(0.01) == 8
