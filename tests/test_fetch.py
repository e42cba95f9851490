"""Stage fetch: local copies verified by sha256 and copied byte-identically; the ground truth only under the official
protocol; any failure leaves data/raw as it was."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from peftqa.errors import PeftqaError
from stages import fetch

UNREACHABLE = "http://127.0.0.1:9/{}"  # the discard port: connection refused at once, no network needed
RAW_BYTES = json.dumps(
    {"101": {"QUESTION": "Does X help?", "CONTEXTS": ["A trial."], "final_decision": "yes"}}
).encode()
TRUTH_BYTES = b'{"101": "yes"}\n'


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def work(tmp_path, monkeypatch, write_params):
    """A working dir with params.yaml pinned to two tiny fake source files in source/, PUBMEDQA_JSON set, and
    prepare.protocol: official (the protocol that needs both files)."""
    source = tmp_path / "source"
    source.mkdir()
    (source / "ori_pqal.json").write_bytes(RAW_BYTES)
    (source / "test_ground_truth.json").write_bytes(TRUTH_BYTES)
    workdir = tmp_path / "work"
    workdir.mkdir()
    pins = {"fetch.sha256": sha256(RAW_BYTES), "fetch.ground_truth_sha256": sha256(TRUTH_BYTES),
            "fetch.url": UNREACHABLE.format("ori_pqal.json"), "fetch.timeout_s": 2,
            "fetch.ground_truth_url": UNREACHABLE.format("test_ground_truth.json"), "prepare.protocol": "official"}
    write_params(workdir, pins)
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("PUBMEDQA_JSON", str(source / "ori_pqal.json"))
    monkeypatch.delenv("PUBMEDQA_GROUND_TRUTH_JSON", raising=False)
    for proxy in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    return SimpleNamespace(dir=workdir, source=source, pins=pins,
                           rewrite=lambda **changes: write_params(workdir, {**pins, **changes}))


def left_in_raw(workdir) -> list[str]:
    """The files in data/raw; also checks that no staging folder was left in data/."""
    assert sorted(p.name for p in (workdir / "data").iterdir()) in ([], ["raw"])
    raw = workdir / "data" / "raw"
    return sorted(p.name for p in raw.iterdir()) if raw.exists() else []


def test_local_files_are_copied_byte_identically(work):
    fetch.main([])
    assert (work.dir / "data/raw/ori_pqal.json").read_bytes() == RAW_BYTES
    assert (work.dir / "data/raw/test_ground_truth.json").read_bytes() == TRUTH_BYTES
    assert left_in_raw(work.dir) == ["ori_pqal.json", "test_ground_truth.json"]  # no temp files


def test_ground_truth_env_var_wins_over_the_sibling(work, tmp_path, monkeypatch):
    other = tmp_path / "elsewhere.json"
    other.write_bytes(b'{"202": "no"}')
    monkeypatch.setenv("PUBMEDQA_GROUND_TRUTH_JSON", str(other))
    work.rewrite(**{"fetch.ground_truth_sha256": sha256(other.read_bytes())})
    fetch.main([])
    assert (work.dir / "data/raw/test_ground_truth.json").read_bytes() == other.read_bytes()


@pytest.mark.parametrize("pin", ["fetch.sha256", "fetch.ground_truth_sha256"])
def test_sha256_mismatch_leaves_nothing(work, pin):
    work.rewrite(**{pin: "0" * 64})
    with pytest.raises(PeftqaError) as err:
        fetch.main([])
    assert "sha256" in str(err.value) and "PUBMEDQA_JSON" in str(err.value)
    assert left_in_raw(work.dir) == []  # not even the file that did verify, nor a temp file


def test_missing_local_file(work, monkeypatch):
    missing = work.source / "nope.json"
    monkeypatch.setenv("PUBMEDQA_JSON", str(missing))
    with pytest.raises(PeftqaError, match="does not exist") as err:
        fetch.main([])
    assert str(missing) in str(err.value)
    assert left_in_raw(work.dir) == []


def test_local_path_is_a_folder(work, monkeypatch):
    monkeypatch.setenv("PUBMEDQA_JSON", str(work.source))
    with pytest.raises(PeftqaError, match="reading .* failed"):
        fetch.main([])
    assert left_in_raw(work.dir) == []


def test_unreachable_url(work, monkeypatch):
    monkeypatch.delenv("PUBMEDQA_JSON")
    with pytest.raises(PeftqaError) as err:
        fetch.main([])
    assert UNREACHABLE.format("ori_pqal.json") in str(err.value) and "PUBMEDQA_JSON" in str(err.value)
    assert left_in_raw(work.dir) == []


def test_without_a_sibling_the_ground_truth_url_is_used(work):
    (work.source / "test_ground_truth.json").unlink()
    with pytest.raises(PeftqaError, match=UNREACHABLE.format("test_ground_truth.json")) as err:
        fetch.main([])
    # offline, the official protocol without the ground truth: the error names the file, the protocol and the fix
    for needle in ("prepare.protocol: official needs", "test_ground_truth.json", "PUBMEDQA_GROUND_TRUTH_JSON"):
        assert needle in str(err.value)
    assert left_in_raw(work.dir) == []


def test_random_protocol_needs_only_ori_pqal(work):
    """Offline with ori_pqal.json alone (no sibling, no PUBMEDQA_GROUND_TRUTH_JSON, no network): the default
    protocol never reads the ground truth, so fetch neither needs nor writes it."""
    (work.source / "test_ground_truth.json").unlink()
    work.rewrite(**{"prepare.protocol": "random"})
    fetch.main([])
    assert left_in_raw(work.dir) == ["ori_pqal.json"]
    assert (work.dir / "data/raw/ori_pqal.json").read_bytes() == RAW_BYTES


def test_data_raw_holds_exactly_the_protocols_files(work):
    fetch.main([])  # official
    assert left_in_raw(work.dir) == ["ori_pqal.json", "test_ground_truth.json"]
    work.rewrite(**{"prepare.protocol": "random"})
    fetch.main([])  # a stale ground truth from the official run is not left behind
    assert left_in_raw(work.dir) == ["ori_pqal.json"]


def test_a_failure_leaves_the_previous_data_raw_untouched(work):
    raw = work.dir / "data/raw"
    raw.mkdir(parents=True)
    (raw / "ori_pqal.json").write_bytes(b"previous")
    work.rewrite(**{"fetch.ground_truth_sha256": "0" * 64})  # ori_pqal.json verifies, the ground truth does not
    with pytest.raises(PeftqaError, match="sha256 mismatch"):
        fetch.main([])
    assert left_in_raw(work.dir) == ["ori_pqal.json"] and (raw / "ori_pqal.json").read_bytes() == b"previous"


@pytest.mark.parametrize("debug", [False, True])
def test_cli_prints_one_error_paragraph(work, pipeline_env, debug):
    work.rewrite(**{"fetch.sha256": "0" * 64})
    env = {**pipeline_env, "PUBMEDQA_JSON": str(work.source / "ori_pqal.json")}
    env.pop("PEFTQA_DEBUG", None)
    command = [sys.executable, "-m", "stages.fetch"] + (["--debug"] if debug else [])
    result = subprocess.run(command, cwd=work.dir, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    if debug:
        assert "Traceback" in result.stderr and "PeftqaError" in result.stderr
    else:
        assert result.stderr.startswith("error: fetch: sha256 mismatch")
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert left_in_raw(work.dir) == []
