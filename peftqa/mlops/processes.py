"""Which process made an MLflow run, and whether it still lives: the OS's view (/proc) that end_orphans needs to mark
a dead process's RUNNING run KILLED, and nothing else."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path


def process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks after boot: /proc/<pid>/stat's 22nd field), or None if it is gone, or
    hidden, or there is no /proc. With the pid it names one process: a pid handed out again starts at another time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # after the command name in parentheses: fields 3, 4, ...


def this_boot() -> tuple[str, str]:
    """(boot id, pid namespace) of this process: a pid means one process only within the same two."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")  # e.g. pid:[4026531836]
    except OSError:
        return "", ""
    return boot, namespace


def process_alive(pid: int, identity: str) -> bool:
    """Whether the process that process_tags described as `pid` and `identity` may still run. After a reboot no
    process of the old boot lives; a process of another pid namespace (a container) cannot be seen, so counts as
    alive; else the pid must be there with the same start time (one hidden from this user, /proc's hidepid, lives)."""
    boot, namespace, start = (identity.split(" ") + ["", "", ""])[:3]
    here_boot, here_namespace = this_boot()
    if boot != here_boot or namespace != here_namespace:
        return boot == here_boot  # rebooted since: gone; another namespace: not ours to judge
    found = process_start(pid)
    if found is not None:
        return found == start
    try:
        with contextlib.suppress(PermissionError):  # hidden from this user (/proc's hidepid): it lives
            os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
