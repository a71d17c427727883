"""`python -m densbench ARGS` in a fork of an interpreter that has already imported densbench's dependencies.

Importing torch, Lightning and Hydra costs about 8 s of CPU in every process, and the end-to-end tests start
dozens of commands: about 7 of the suite's 24 CPU-minutes on CI's two cores. A test worker starts this file once as
a server (`python prewarmed.py`); it imports densbench first (so the numerical pinning happens before torch loads,
as in a command) and then what a run imports, and afterwards only forks. Each fork takes the test's working
directory, environment, arguments and output files, and runs `densbench` as `python -m densbench` would, at the
top level of the interpreter: exceptions, SystemExit, signals and exit handlers behave as in a fresh process.
densbench itself forks after these imports (the stacked launcher's workers, the figures' pool), so the fork is
as safe as the command's own.

What a fork cannot show is what happens before or during those imports (a refusal before torch loads, the
caller's kernel variables, anything the imports print, the start-up a process pays) or in the interpreter's
final teardown, which a fork skips: tests of those ask for a fresh interpreter (`run_cli(..., fresh=True)`), and
so does any call whose environment differs from the one the server imported in. test_numerics runs the same
sweep in a fork and fresh under other launchers and requires the same figures.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
# variables whose values the imports fix (ATen's kernels, MKL's branch, OpenMP's threads, the visible devices,
# densbench's numerics mode); others are read when used, so a fork takes them from the test. Libraries set
# variables of their own as they load or run (torch's inductor cache, Lightning's NVML check, MLflow's session,
# Intel OpenMP's KMP_ switches, which torch's GNU OpenMP does not read): those are not compared
READ_AT_IMPORT = ("ATEN_", "MKL_", "OMP_", "GOMP_", "OPENBLAS_", "CUDA_VISIBLE_DEVICES", "DENSBENCH_NUMERICS",
                  "PYTHONHASHSEED", "PYTHONWARNINGS")
PRELOAD = ("densbench", "densbench.__main__", "densbench.runs.execution")


def read_at_import(env: dict) -> dict:
    """The variables of env whose values the imports fix."""
    return {k: v for k, v in env.items() if k.startswith(READ_AT_IMPORT)}


class Server:
    """The client side: one server process per test worker, started on first use."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.pending = b""  # what the server said beyond the last line read
        # what the server's imports read (kernel and thread variables): the environment the tests started in
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")

    def serves(self, env: dict) -> bool:
        """Whether a fork would see what a fresh interpreter started with env sees: the same variables that are read
        when torch and densbench load (kernels, threads, devices), and nothing on PYTHONPATH but this folder."""
        path = env.get("PYTHONPATH", "")
        return read_at_import(env) == read_at_import(self.env) and path in {"", HERE, self.env.get("PYTHONPATH", "")}

    def run(self, args: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
        """Run `python -m densbench ARGS` in a fork and return it as subprocess.run would."""
        if self.proc is None or self.proc.poll() is not None:
            self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         env=self.env, cwd=HERE)
            self.pending = b""
        pid = 0
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "out", Path(tmp) / "err"
            try:
                request = {"args": args, "cwd": str(cwd), "env": env, "out": str(out), "err": str(err)}
                self.proc.stdin.write(json.dumps(request).encode() + b"\n")
                self.proc.stdin.flush()
                pid = int(self._line(300))  # the first request waits for the server's imports
                status = int(self._line(timeout))
            except BaseException as exc:  # the fork and the server go: the next command starts a new server
                for victim in (pid, self.proc.pid):
                    if victim > 0:
                        try:
                            os.kill(victim, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                self.proc.wait()
                self.proc = None
                if isinstance(exc, subprocess.TimeoutExpired):
                    raise subprocess.TimeoutExpired(["densbench", *args], timeout) from None
                raise
            return subprocess.CompletedProcess(["densbench", *args], status, out.read_text(), err.read_text())

    def _line(self, timeout: float) -> str:
        """The server's next line (read from its pipe unbuffered: a buffered reader would hide a second line from select)."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.pending:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise subprocess.TimeoutExpired("prewarmed", timeout)
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError("the prewarmed interpreter ended")
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode()

    def close(self) -> None:
        """End the server (it also ends when its input closes)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)


def _serve() -> dict | None:
    """Fork per request; return the request in the child, None when the input ends."""
    for name in PRELOAD:
        __import__(name)
    gc.freeze()  # a fork's collections leave the imported objects alone instead of copying their pages
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            return request
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)
    return None


def _become(request: dict) -> None:
    """Turn this fork into `python -m densbench ARGS` started in the request's folder and environment."""
    from densbench import timing

    timing.PROCESS_START = time.time()  # a process that starts now: its start-up is its own
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                            (2, request["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)
        os.close(opened)
    sys.stdin = open(0, closefd=False)  # a reader of the new fd 0: the server's holds lines it buffered from its pipe
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    # as `python -m` builds it: the working directory, then PYTHONPATH, then the installation's paths
    sys.path[:] = [os.getcwd(), *extra, *[p for p in sys.path[1:] if p not in extra]]
    sys.argv = ["-m", *request["args"]]
    del sys.modules["densbench.__main__"]  # runpy executes it afresh, as `python -m` does, and warns if it is there


def _run() -> None:
    """Run densbench as the interpreter's main module and leave as an interpreter would, minus its teardown."""
    import atexit
    import runpy
    import threading
    import traceback

    code, interrupted = 1, False
    try:
        try:
            runpy.run_module("densbench", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = 0 if exc.code is None else exc.code
            if not isinstance(code, int):  # sys.exit("message"), as the interpreter reports it
                print(code, file=sys.stderr)
                code = 1
        except BaseException as exc:
            traceback.print_exc()
            interrupted = isinstance(exc, KeyboardInterrupt)
        # what an interpreter's exit does first, in its order: join the threads (whose exit hooks stop the
        # launcher's worker pools), then the exit handlers (loggers, multiprocessing's join of its children,
        # weakref finalizers). The teardown after them is skipped: it touches every object and so copies every
        # page the fork shares with the server (2 s a run, for nothing a test could see)
        for step in (threading._shutdown, atexit._run_exitfuncs, sys.stdout.flush, sys.stderr.flush):
            try:
                step()
            except BaseException:  # a signal or a failed flush here: as an interpreter, keep the command's status
                pass
        if interrupted:  # an interpreter ends itself by the signal, for its parent to see
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        os._exit(code)


if __name__ == "__main__":
    _request = _serve()
    if _request is not None:
        _become(_request)
        _run()
