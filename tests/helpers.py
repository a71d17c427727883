"""Test-only Lightning callbacks, loaded by runs through `+callbacks.<name>._target_=helpers.<Class>`, and Hydra
callbacks (`+hydra.callbacks.<name>._target_=helpers.<Class>`)."""

import os
import signal
from pathlib import Path

import lightning.pytorch as pl
import torch
from hydra.experimental.callback import Callback


class RaiseAtStep(pl.Callback):
    """Raise an ordinary exception once training has passed `step` optimisation steps."""

    def __init__(self, step: int = 10):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.state.opt_steps >= self.step:
            raise RuntimeError(f"injected failure after step {pl_module.state.opt_steps}")


class SignalAtStep(pl.Callback):
    """Send this process `signal` from inside optimisation step `step` (inside a chunk, not at its edge).

    Fires once: it leaves `marker` behind, so a rerun with the identical config (the resume key covers
    callbacks too) trains on undisturbed.
    """

    def __init__(self, step: int, signal: str = "SIGINT", marker: str = "signalled", parent: bool = False):
        self.step, self.signum, self.marker = step, getattr(signal_module, signal), Path(marker)
        self.parent = parent  # signal the process that started this one (a parallel sweep's own process)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if getattr(pl_module, "_signal_wrapped", False):
            return
        with open(f"{self.marker}.pids", "a") as pids:  # which processes trained, for a test to check they end
            pids.write(f"{os.getpid()}\n")
        original = pl_module.loss

        def loss(*args, **kwargs):
            if pl_module.state.opt_steps == self.step and not self.marker.exists():
                self.marker.write_text(str(self.step))
                os.kill(os.getppid() if self.parent else os.getpid(), self.signum)
            return original(*args, **kwargs)

        pl_module.loss = loss
        pl_module._signal_wrapped = True


signal_module = signal


class PoisonModel(pl.Callback):
    """Overwrite one model's output weights of a stack with NaN once `step` optimisation steps have run."""

    def __init__(self, model: int, step: int = 10):
        self.model, self.step, self.done = model, step, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if not self.done and pl_module.state.opt_steps >= self.step:
            with torch.no_grad():
                pl_module.head.linear.weight[self.model].fill_(float("nan"))
            self.done = True


class _WhileReporting(Callback):
    """Hydra callback: the sweep's report, when it is written, first meets `fault` (a signal, a full disk)."""

    def fault(self, out) -> None:  # pragma: no cover - each subclass says what happens
        raise NotImplementedError

    def on_multirun_start(self, config, **kwargs):
        from densbench.report import sweep as report
        original = report.write_report

        def faulty(sweep_dir, out, *args, **kw):
            self.fault(out)
            return original(sweep_dir, out, *args, **kw)

        report.write_report = faulty


class SignalWhileReporting(_WhileReporting):
    """SIGINT at the sweep's end, while its report is written."""

    def fault(self, out) -> None:
        os.kill(os.getpid(), signal.SIGINT)


class FullDiskWhileReporting(_WhileReporting):
    """A full disk while the sweep's report is written."""

    def fault(self, out) -> None:
        import errno

        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(out) / "report.md"))
