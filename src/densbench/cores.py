"""The cores a process may use: its CPU affinity, and the cap on torch threads a worker was given (torch-free)."""

from __future__ import annotations

import os

THREADS_VARIABLE = "DENSBENCH_MAX_THREADS"  # a worker's cap on torch threads (densbench.runs.devices.threads)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the platform tells, else every core)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_cap() -> int | None:
    """The cap on torch threads a worker process was given, if any."""
    value = os.environ.get(THREADS_VARIABLE)
    return int(value) if value and value.isdigit() else None
