"""Stop a child process at a known point, at any machine speed: the child says that it got there and blocks until the
test lets it go on or kills it. Nothing polls a file and nothing races the child.

The test's side is a Listener, an abstract Unix socket whose name travels in the child's environment (so it reaches
grandchildren too, such as the stages a `dvc queue` worker runs). The child's side is reach(): connect, send one line
`<pid> <DVC_EXP_NAME>`, then block reading until the test closes the connection. A training holds after its Nth
checkpoint write without any hook in peftqa: hold_site/sitecustomize.py, first on the child's PYTHONPATH only, wraps
peftqa.training.loop.save_checkpoint as that module is imported (fit calls it after each epoch, save_mid_epoch inside
one), so the real command still runs, through run_cli and its stop handlers.
"""
from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

SOCKET_VAR = "PEFTQA_TESTS_HOLD_SOCKET"  # the Listener's name; reach() goes on at once without it
CHECKPOINTS_VAR = "PEFTQA_TESTS_HOLD_AFTER_CHECKPOINTS"  # N: a training holds after its Nth checkpoint write
SITE = Path(__file__).resolve().parent / "hold_site"  # absolute: a queued experiment runs in a copy under .dvc/tmp
TIMEOUT_S = 240  # only a guard against a hang: a tiny training reaches its checkpoint in seconds


# -----------------------------------------------------------------------------
# the child's side


def reach() -> None:
    """Tell the test that this process got to the point, then block until the test lets it go on (closes the
    connection) or ends it by a signal. The wait is a blocking read in the calling (main) thread, so a SIGTERM or SIGINT
    handler's exception is raised from here. Goes on at once if no test listens any more: a stage run again after the
    test has done its holding (an experiment queued again) does not hold."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(f"\0{os.environ[SOCKET_VAR]}")
        except (KeyError, ConnectionRefusedError):
            return
        sock.sendall(f"{os.getpid()} {os.environ.get('DVC_EXP_NAME', '')}\n".encode())
        try:
            sock.recv(1)  # b"" once the test closes its end
        except ConnectionResetError:  # the test stopped listening before it took this connection
            pass


def hold_after(save, writes: int):
    """`save` (save_checkpoint), holding (reach) once its `writes`th call has returned: the file is whole and in
    place."""
    calls = 0

    @functools.wraps(save)
    def save_then_hold(*args, **kwargs):
        nonlocal calls
        save(*args, **kwargs)
        calls += 1
        if calls == writes:
            reach()

    return save_then_hold


class HoldAfterCheckpoints(importlib.abc.MetaPathFinder):
    """An import hook: finds peftqa.training.loop as usual, and once the module has run, replaces its
    save_checkpoint by hold_after's. Imports nothing itself, so the processes that never train (dvc's) pay nothing."""

    def __init__(self, writes: int):
        self.writes = writes

    def find_spec(self, name: str, path, target=None):
        if name != "peftqa.training.loop":
            return None
        sys.meta_path.remove(self)  # once, and the lookup below must not come back here
        spec = importlib.util.find_spec(name)
        run_module = spec.loader.exec_module

        def run_and_wrap(module) -> None:
            run_module(module)
            module.save_checkpoint = hold_after(module.save_checkpoint, self.writes)

        spec.loader.exec_module = run_and_wrap  # the loader is this spec's own instance
        return spec


def install() -> None:
    """What hold_site/sitecustomize.py runs at the child's start when CHECKPOINTS_VAR is set."""
    sys.meta_path.insert(0, HoldAfterCheckpoints(int(os.environ[CHECKPOINTS_VAR])))


# -----------------------------------------------------------------------------
# the test's side


@dataclass
class Held:
    """A child blocked in reach(): its pid and DVC_EXP_NAME ("" outside a DVC experiment), and the test's end of its
    connection; `process` when the test started it itself."""
    pid: int
    name: str
    connection: socket.socket
    process: subprocess.Popen | None = None

    def release(self) -> None:
        """Let the child go on."""
        self.connection.close()


class Listener:
    """The socket children connect to from reach(). Listening starts before any child does; close() (or leaving the
    `with` block) releases every child still held, and a child that reaches its point later goes on at once."""

    def __init__(self):
        self.name = f"peftqa-tests-hold-{os.getpid()}-{secrets.token_hex(8)}"
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.socket.bind(f"\0{self.name}")  # abstract: no file to clean up, no 108-byte path limit
        self.socket.listen()
        self.held: list[Held] = []

    def env(self, base: dict[str, str], after_checkpoints: int = 0) -> dict[str, str]:
        """`base` plus what a child needs to find this listener; with after_checkpoints, a training in it (or in its
        children) holds after that many checkpoint writes."""
        env = {**base, SOCKET_VAR: self.name}
        if after_checkpoints:
            env[CHECKPOINTS_VAR] = str(after_checkpoints)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SITE), base.get("PYTHONPATH")]))
        return env

    def accept(self, process: subprocess.Popen | None = None, log: Path | None = None,
               timeout_s: float = TIMEOUT_S) -> Held:
        """Block until a child has reached its point (it is held from then on); fails at once, with the end of `log`
        (its stderr), if `process` ends first."""
        ends = [os.pidfd_open(process.pid)] if process is not None else []  # readable once the process has ended
        try:
            ready, _, _ = select.select([self.socket, *ends], [], [], timeout_s)
        finally:
            for pidfd in ends:
                os.close(pidfd)
        if self.socket not in ready:
            tail = log.read_text()[-3000:] if log is not None else ""
            if process is not None and process.poll() is not None:
                command = " ".join(map(str, process.args))
                raise AssertionError(f"{command:.200} ended (status {process.returncode}) before it reached its hold "
                                     f"point:\n{tail}")
            raise AssertionError(f"no process reached its hold point in {timeout_s} s:\n{tail}")
        connection, _ = self.socket.accept()
        with connection.makefile("r") as lines:  # closing the file leaves the socket open
            pid, _, name = lines.readline().rstrip("\n").partition(" ")
        self.held.append(Held(int(pid), name, connection, process))
        return self.held[-1]

    def close(self) -> None:
        for held in self.held:
            held.release()
        self.socket.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def default_stop_signals() -> None:
    """In the child before it runs: SIGINT and SIGTERM at their default, as a terminal's foreground job has them. A
    suite started in the background by a shell without job control (`make test &`, some CI runners) passes SIGINT on
    ignored, and peftqa rightly leaves an inherited SIG_IGN alone: a sent SIGINT would then do nothing at all."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


@contextmanager
def held_process(command: list[str], log: Path, after_checkpoints: int = 0, **popen) -> Iterator[Held]:
    """Start `command` (stdout dropped, stderr to `log`, stop signals at their default; `popen` as for Popen, its env
    given) and yield it once it is held at its point; it is killed on the way out if it still runs."""
    with Listener() as listener, log.open("w") as stderr:
        env = listener.env(popen.pop("env"), after_checkpoints)
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
                                   preexec_fn=default_stop_signals, **popen)
        try:
            yield listener.accept(process, log)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
