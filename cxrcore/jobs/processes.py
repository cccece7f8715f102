"""Process helpers for jobs: detached processes, liveness, kills, exit reasons and file locks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..runs import PROJECT_ROOT, process_alive


def spawn(module_args: list[str], log, env: dict) -> subprocess.Popen:
    """``python -m <module_args>`` in its own session (closing a terminal or the app does not
    stop it), run from the project root, output appended to ``log`` (closed here)."""
    try:
        return subprocess.Popen(
            [sys.executable, "-m", *module_args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(PROJECT_ROOT),
            start_new_session=True,
        )
    finally:
        log.close()


def kill_group(pid: int | None, wait: float = 5.0) -> None:
    """SIGKILL ``pid``'s process group (or the process alone) and wait up to ``wait`` s for it to go."""
    if not pid:
        return
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
            break
        except (ProcessLookupError, PermissionError):
            continue
    deadline = time.time() + wait
    while time.time() < deadline:
        try:
            waited, _ = os.waitpid(pid, os.WNOHANG)  # our own child: reap it
            if waited == pid:
                return
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def worker_alive(pid: int | None, job_id: str) -> bool:
    """Whether ``pid`` is still this job's worker (not a recycled pid: its command line names the job)."""
    if not process_alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if cmdline.exists():
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return True
        return job_id in text and "cxrcore.jobs.worker" in text
    return True


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        sig = -returncode
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
        hint = " (out of memory, or killed by hand)" if sig == signal.SIGKILL else ""
        return f"worker process killed by {name}{hint}"
    return f"worker process exited with status {returncode} without recording a result"


def try_lock(path: Path):
    """An exclusive file lock the OS releases when this process dies; the open file, or None."""
    import fcntl

    fh = open(path, "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        return None
    return fh
