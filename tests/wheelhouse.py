"""The wheels of a served model's requirements, for the fresh-virtualenv test (tests/test_registry.py).

PyPI's answers here carry no caching headers, so pip's own cache keeps nothing, and resolving the 100-odd packages
against the indexes takes minutes. The wheels are kept between sessions in WHEELHOUSE, and conftest starts filling
it in the background as soon as that test is collected: the download waits on the network while the other tests use
the CPU, and the test itself then installs from the folder alone.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

WHEELHOUSE = Path(os.environ.get("PEFTQA_WHEELHOUSE", Path.home() / ".cache/peftqa/wheelhouse"))

_download: subprocess.Popen | None = None


def start_download() -> None:
    """`pip download` of serving.requirements() into WHEELHOUSE, in the background (once per session)."""
    global _download
    if _download is not None:
        return
    from stages.serving import requirements

    WHEELHOUSE.mkdir(parents=True, exist_ok=True)
    listing = Path(tempfile.mkstemp(prefix="peftqa-requirements-", suffix=".txt")[1])
    listing.write_text("\n".join(requirements()) + "\n", encoding="utf-8")
    log = open(WHEELHOUSE / "download.log", "w")  # noqa: SIM115 (open for the life of the process)
    _download = subprocess.Popen([sys.executable, "-m", "pip", "--disable-pip-version-check", "download", "-q",
                                  "-d", str(WHEELHOUSE), "-r", str(listing)], stdout=log, stderr=subprocess.STDOUT)


def wait_for_download(timeout_s: float = 1800) -> None:
    """Let a background download started by start_download() finish (a failed one is made up for by the test)."""
    if _download is not None and _download.poll() is None:
        _download.wait(timeout=timeout_s)
