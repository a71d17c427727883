"""How a parallel sweep stops on SIGINT or SIGTERM: its workers record their jobs' stops, then it ends.

The sweep's own process only waits on joblib; the jobs run in loky worker processes. Raising in the
parent would make joblib kill the workers before they write their ``interrupted`` records (and keep
their checkpoints), so the parent passes the signal on and waits. Two files in the sweep directory
carry the rest: ``.stop``, written first, turns every job that has not started yet into a no-op (a
rerun of the same command runs it); ``.workers`` lists the workers that have installed their handlers,
the only ones signalled (a worker that never took a job would die of the default action).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from types import FrameType

from densbench.signals import HANDLED

STOP_FILE = ".stop"
WORKERS_FILE = ".workers"

_sweep: list[Path] = []  # in a worker: the sweep directory of the jobs it runs
_stopped: list[int] = []  # in a worker: signals received outside a job, or that stopped one


def reset(sweep_dir: Path) -> None:
    """At the start of a parallel sweep: no stop asked, no worker listed yet."""
    for name in (STOP_FILE, WORKERS_FILE):
        (Path(sweep_dir) / name).unlink(missing_ok=True)


def forward(sweep_dir: Path, signum: int) -> None:
    """In the sweep's process: ask for the stop, then signal the workers that run jobs."""
    sweep_dir = Path(sweep_dir)
    try:
        (sweep_dir / STOP_FILE).write_text(signal.Signals(signum).name)
        listed = (sweep_dir / WORKERS_FILE).read_text().split()
    except OSError:
        listed = []
    for pid in {int(p) for p in listed if p.isdigit()}:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def become_worker(sweep_dir: Path) -> None:
    """In a worker, before its first job: signals outside a job only mark it stopping; then list it."""
    if _sweep or threading.current_thread() is not threading.main_thread():
        return
    _sweep.append(Path(sweep_dir))

    def handle(signum: int, frame: FrameType | None) -> None:
        _stopped.append(signum)

    for sig in HANDLED:
        signal.signal(sig, handle)
    fd = os.open(Path(sweep_dir) / WORKERS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())  # one short O_APPEND write: safe beside the other workers'
    finally:
        os.close(fd)


def in_worker() -> bool:
    """True in a parallel sweep's worker process."""
    return bool(_sweep)


def stopping() -> bool:
    """In a worker: the sweep was asked to stop, so a job that has not started stays unrun."""
    return bool(_sweep) and (bool(_stopped) or (_sweep[0] / STOP_FILE).exists())


def stopped(signum: int) -> None:
    """In a worker: one of its jobs was stopped by ``signum`` (it has written its record)."""
    _stopped.append(signum)
