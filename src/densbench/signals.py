"""SIGINT and SIGTERM as an orderly stop, at any stage of a job.

Python's default SIGINT handler raises KeyboardInterrupt wherever the interpreter happens to be,
possibly between two updates of one optimiser step; Lightning answers a KeyboardInterrupt with
``sys.exit(1)`` and ignores SIGINT for the rest of the process. So a job installs its own handler:
while training it only records the signal and the engine stops at the next optimisation-step
boundary (the state it checkpoints is then exactly that of an uninterrupted run after that step);
at any other stage (loading data, testing, figures) it raises ``Interrupted`` at once, since there is
no state to keep consistent there and every file is written atomically.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, Callable

HANDLED = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A job stopped by SIGINT or SIGTERM (a BaseException, like KeyboardInterrupt, so that no
    ``except Exception`` on the way swallows it); ``announced`` once its line has been printed."""

    def __init__(self, signum: int, stage: str, announced: bool = False):
        super().__init__(f"{signal.Signals(signum).name} while {stage}")
        self.signum, self.stage, self.announced = signum, stage, announced

    def line(self) -> str:
        """The one line a user reads."""
        return (f"densbench: interrupted by {signal.Signals(self.signum).name} while {self.stage}; finished runs are kept; "
                "rerun the same command to resume")


# Outside a job (importing, composing a sweep, writing its report), a signal stops the process with
# one line instead of a traceback (SIGINT) or a silent exit (SIGTERM); a job installs its own handlers
_process_stage: list["process_stage"] = []


def install_process_handlers() -> None:
    """SIGINT and SIGTERM raise Interrupted naming the process's current stage (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        stage = _process_stage[-1] if _process_stage else None
        if _forwarders and stage is not None:
            # worker processes run the jobs: each records its own stop; this process waits for them
            # (raising here would make joblib kill them before they could write their records)
            for forward in _forwarders:
                forward(signum)
            stage.received = signum
            return
        if stage is not None and stage.deferred:
            stage.received = signum
            return
        raise Interrupted(signum, stage.name if stage else "starting")

    for sig in HANDLED:
        signal.signal(sig, handle)


_forwarders: list[Callable[[int], None]] = []


def forward_to(forward: Callable[[int], None]) -> Callable[[], None]:
    """While registered, a signal to this process is passed on with ``forward`` and honoured when the
    current stage ends; returns the function that unregisters it."""
    _forwarders.append(forward)
    return lambda: _forwarders.remove(forward) if forward in _forwarders else None


class process_stage:
    """Context manager naming what the process does now (for the line a signal prints).

    deferred: a signal is honoured when the stage ends, not inside it. Importing torch is such a stage:
    an exception raised in the middle of its initialisation leaves C++ state that aborts the process
    at exit (SIGABRT instead of one line)."""

    def __init__(self, name: str, deferred: bool = False) -> None:
        self.name, self.deferred = name, deferred
        self.received: int | None = None

    def __enter__(self) -> "process_stage":
        _process_stage.append(self)
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        _process_stage.remove(self)
        # a sweep that ends with an exit status (its report counts failures), or whose worker pool broke
        # as the signal reached it, was still stopped by the signal: the line says so
        if self.received is not None and (kind is None or not issubclass(kind, Interrupted)):
            raise Interrupted(self.received, self.name) from None


class JobSignals:
    """Context manager installing the job's handlers; ``stage`` and ``deferred`` say what a signal does now."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.stage = "starting"
        self.deferred = False  # True while training: stop at the next step boundary instead of at once
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "JobSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in HANDLED:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handle)
        _ACTIVE.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _ACTIVE.remove(self)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def enter(self, stage: str, deferred: bool = False) -> None:
        """Start a stage; a signal that arrived while deferring is honoured now."""
        self.stage, self.deferred = stage, deferred
        if self.received is not None and not deferred:
            raise Interrupted(self.received, stage)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        already = self.received is not None
        self.received = signum
        # a second signal (Ctrl-C in a terminal reaches a parallel sweep's workers directly and again
        # through the parent) must not raise inside the handling of the first, while records are written
        if not self.deferred and not already:
            raise Interrupted(signum, self.stage)


_ACTIVE: list[JobSignals] = []


def stop_requested() -> int | None:
    """The signal received by the running job, if any (checked by the engine between steps)."""
    return _ACTIVE[-1].received if _ACTIVE else None


def raise_if_stopped(stage: str = "training") -> None:
    """Raise Interrupted if the running job received a signal."""
    sig = stop_requested()
    if sig is not None:
        raise Interrupted(sig, stage)
