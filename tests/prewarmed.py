"""`python -m densbench ARGS` in a fork of an interpreter that has already imported densbench's dependencies.

Importing torch, Lightning and Hydra costs about 8 s of CPU in every process, and the end-to-end tests start
dozens of commands: on CI's two cores that was half of the suite's time. A test worker starts this file once as
a server (`python prewarmed.py`); it imports densbench first (so the numerical pinning happens before torch loads,
as in a command) and then what a run imports, and afterwards only forks. Each fork takes the test's working
directory, environment, arguments and output files, and runs `densbench` as `python -m densbench` would, at the
top level of the interpreter: exceptions, SystemExit, signals and exit handlers behave as in a fresh process.
densbench itself forks after these imports (the stacked launcher's workers, the figures' pool), so the fork is
as safe as the command's own.

What a fork cannot show is what happens before those imports (a refusal before torch loads, the caller's kernel
variables, the start-up a process pays): tests of those ask for a fresh interpreter (`run_cli(..., fresh=True)`).
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
from pathlib import Path

PRELOAD = ("densbench", "densbench.__main__", "densbench.runs.execution")


class Server:
    """The client side: one server process per test worker, started on first use."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        # what the server's imports may read (kernel and thread variables): the environment the tests started in,
        # not whatever a test has changed by the time the first command runs
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")

    def _ensure(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            env = self.env
            self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         text=True, env=env, cwd=Path(__file__).parent)
        return self.proc

    def run(self, args: list[str], cwd: Path, env: dict, timeout: float) -> subprocess.CompletedProcess:
        """Run `python -m densbench ARGS` in a fork and return it as subprocess.run would."""
        proc = self._ensure()
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "out", Path(tmp) / "err"
            proc.stdin.write(json.dumps({"args": args, "cwd": str(cwd), "env": env, "out": str(out), "err": str(err)}) + "\n")
            proc.stdin.flush()
            pid = int(self._line(proc, 120))
            try:
                status = int(self._line(proc, timeout))
            except subprocess.TimeoutExpired:
                os.kill(pid, signal.SIGKILL)
                self._line(proc, 60)
                raise subprocess.TimeoutExpired(["densbench", *args], timeout) from None
            return subprocess.CompletedProcess(["densbench", *args], status, out.read_text(), err.read_text())

    def _line(self, proc: subprocess.Popen, timeout: float) -> str:
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            raise subprocess.TimeoutExpired("prewarmed", timeout)
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError("the prewarmed interpreter ended")
        return line

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
    import time

    from densbench import timing

    timing.PROCESS_START = time.time()  # a process that starts now: its start-up is its own
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, request["out"]), (2, request["err"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
    sys.stdin = open(os.devnull)
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

    interrupted = False
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
        code, interrupted = 1, isinstance(exc, KeyboardInterrupt)
    # what an interpreter's exit does first, in its order: join the threads (whose exit hooks stop the launcher's
    # worker pools), then the exit handlers (loggers, multiprocessing's join of its children, weakref finalizers).
    # The teardown after them is skipped: it touches every object and so copies every page the fork shares with
    # the server (2 s a run, for nothing a test could see)
    threading._shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    if interrupted:  # an interpreter ends itself by the signal, for its parent to see
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


if __name__ == "__main__":
    _request = _serve()
    if _request is not None:
        _become(_request)
        _run()
