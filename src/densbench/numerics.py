"""Pinned numerics: the CPU code paths a run computes with, chosen before torch loads, so figures do not depend on the machine.

Training these small networks is chaotic: a difference in the last bit of one product grows, over a
few thousand optimisation steps, into differences as large as the gaps between the methods a
benchmark ranks. What differs between two x86-64 machines with the same code and libraries is which
kernels run: ATen picks its vectorised kernels by the CPU's instruction sets (scalar, AVX2 or
AVX-512 builds of exp, log, sums...), and MKL picks its matrix-product kernels by CPU, instruction set
and by how many products one batched call holds. Measured on one machine (tests/test_numerics.py and
the README's "Reproducibility"): ATen's AVX2 and AVX-512 kernels agree bit for bit while its scalar
ones do not; MKL's kernels differ between instruction sets in both precisions, and without its strict
reproducibility mode a model's products depend on how many models share its stack.

So, unless the caller opts out with ``DENSBENCH_NUMERICS=native``, densbench fixes before torch is
imported:

- ``ATEN_CPU_CAPABILITY=avx2`` where the CPU has AVX2 and FMA (the caller's value is replaced);
- ``MKL_CBWR=AVX2,STRICT``: MKL's AVX2 branch in strict mode, whose results do not depend on the
  number of threads or on the batch size of a batched product, and ``MKL_ENABLE_INSTRUCTIONS``
  removed (a lower limit would take MKL off that branch).

MKL documents its AVX2 branch for Intel CPUs; on other vendors' CPUs it falls back to its own
dispatch, and figures differ there. Measured on an AMD EPYC (AVX2): every MKL_CBWR branch gave the
same figures, unlike on Intel, and a model's float64 products differed in the last bit between a
stack and alone; none of three committed per-run figures from an Intel Xeon reproduced.
``describe()`` records the CPU's vendor and whether MKL's strict branch applies (``mkl_strict``).
A process that imported torch before densbench cannot be pinned any more; ``describe()`` says so
and provenance records it.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from pathlib import Path
from typing import Any

ENV_SWITCH = "DENSBENCH_NUMERICS"  # "native": leave the caller's environment and torch's own dispatch alone
CAPABILITY = "avx2"
MKL_BRANCH = "AVX2,STRICT"
_state: dict[str, Any] = {}


@functools.cache
def _cpuinfo(field: str) -> str:
    """The value of the first `field` line of /proc/cpuinfo (empty where it cannot be read: not Linux, no such field)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(field):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags() -> set[str]:
    """The instruction-set flags of this CPU (empty where /proc/cpuinfo cannot be read)."""
    return set(_cpuinfo("flags").split())


def cpu_vendor() -> str:
    """The CPU's vendor string (GenuineIntel, AuthenticAMD...; empty where /proc/cpuinfo cannot be read)."""
    return _cpuinfo("vendor_id")


def mkl_strict() -> bool:
    """Whether MKL's strict reproducibility branch holds here: kernels pinned, on an Intel CPU (the only vendor MKL honours it on)."""
    return pin().get("mode") == "portable" and cpu_vendor() == "GenuineIntel"


def plan(env: dict[str, str], machine: str, flags: set[str], torch_loaded: bool) -> tuple[dict[str, Any], dict[str, str | None]]:
    """What pinning does in this situation: (the record for provenance, the environment changes; None removes)."""
    if env.get(ENV_SWITCH, "portable") == "native":
        return {"mode": "native", "why": f"{ENV_SWITCH}=native"}, {}
    if torch_loaded:
        return {"mode": "unpinned", "why": "torch was imported before densbench"}, {}
    if machine.lower() not in ("x86_64", "amd64") or not {"avx2", "fma"} <= flags:
        return {"mode": "unpinned", "why": f"no AVX2 and FMA on this CPU ({machine})"}, {}
    changes = {"ATEN_CPU_CAPABILITY": CAPABILITY, "MKL_CBWR": MKL_BRANCH, "MKL_ENABLE_INSTRUCTIONS": None}
    record: dict[str, Any] = {"mode": "portable", "why": None}
    overridden = {k: env[k] for k, v in changes.items() if k in env and env[k] != v}
    if overridden:
        record["caller"] = overridden  # the caller's values, replaced
    return record, changes


def pin() -> dict[str, Any]:
    """Fix ATen's and MKL's code paths in this process's environment (before torch loads); what was done."""
    if not _state:
        record, changes = plan(dict(os.environ), platform.machine(), cpu_flags(), "torch" in sys.modules)
        for key, value in changes.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _state.update(record)
    return _state


def describe() -> dict[str, Any]:
    """The numerics this process computes with, for provenance: mode, ATen's capability, MKL's branch."""
    out = dict(pin())
    out["mkl_cbwr"] = os.environ.get("MKL_CBWR")
    out["cpu_vendor"] = cpu_vendor() or None
    out["mkl_strict"] = mkl_strict()
    torch = sys.modules.get("torch")
    if torch is not None:
        out["aten_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return {k: v for k, v in out.items() if v is not None}
