"""Test-only Lightning callbacks, loaded by runs through `+callbacks.<name>._target_=helpers.<Class>`."""

import lightning.pytorch as pl


class RaiseAtStep(pl.Callback):
    """Raise an ordinary exception once training has passed `step` optimisation steps."""

    def __init__(self, step: int = 10):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if pl_module.opt_steps >= self.step:
            raise RuntimeError(f"injected failure after step {pl_module.opt_steps}")
