"""What densbench.training.engine relies on in Lightning without a public hook for it, pinned.

The engine hands Lightning an iterable of chunks with no length (one epoch = one evaluation period)
and plain objects as batches. If a Lightning release within the supported range changes any of the
behaviours below, these tests fail before a run silently validates at the wrong time or trains on
copied data.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch

from densbench.runs.assembly import quiet_lightning


class Plain:
    """A batch Lightning does not know (like engine.Chunk): it must reach training_step as it is."""

    __slots__ = ("i", "tensor")

    def __init__(self, i: int, tensor: torch.Tensor) -> None:
        self.i, self.tensor = i, tensor


class Stream:
    """Yields a different number of batches per epoch and records when each is planned and fetched."""

    def __init__(self, events: list, sizes: list[int]) -> None:
        self.events, self.sizes, self.epoch, self.made = events, sizes, 0, []

    def __iter__(self):
        self.events.append(("plan", self.epoch))
        n = self.sizes[self.epoch]
        self.epoch += 1
        for i in range(n):
            batch = Plain(i, torch.ones(2))
            self.made.append(batch)
            self.events.append(("fetch", i))
            yield batch


class Recorder(pl.LightningModule):
    def __init__(self, events: list) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.events, self.seen = events, []

    def training_step(self, batch, batch_idx):
        self.seen.append(batch)
        self.events.append(("train", batch.i))

    def validation_step(self, batch, batch_idx):
        self.events.append(("val", batch_idx))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(sizes: list[int]) -> tuple[list, Recorder, Stream]:
    quiet_lightning()
    events: list = []
    module, stream = Recorder(events), Stream(events, sizes)
    val = [torch.zeros(1)]
    trainer = pl.Trainer(max_epochs=len(sizes), logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, num_sanity_val_steps=0, accelerator="cpu", devices=1)
    trainer.fit(module, train_dataloaders=stream, val_dataloaders=val)
    return events, module, stream


def test_an_iterable_without_length_is_validated_after_its_last_batch_every_epoch():
    # ChunkStream has no __len__, and a period's chunk count varies (a resumed or short last period)
    events, _, _ = _fit([3, 1, 2])
    per_epoch = []
    for e in events:
        if e[0] == "plan":
            per_epoch.append([])
        per_epoch[-1].append(e[0] if e[0] != "train" else f"train{e[1]}")
    for epoch, n in zip(per_epoch, [3, 1, 2]):
        trained = [e for e in epoch if e.startswith("train")]
        assert trained == [f"train{i}" for i in range(n)]
        assert epoch.count("val") == 1 and epoch[-1] == "val", epoch  # once, after the last batch


def test_each_epoch_is_planned_after_the_previous_validation():
    # ChunkStream plans its chunks from the step count when iteration starts: that must be after
    # the previous period's validation (and model selection) has run
    events, _, _ = _fit([2, 2])
    plans = [i for i, e in enumerate(events) if e[0] == "plan"]
    first_val = next(i for i, e in enumerate(events) if e[0] == "val")
    assert plans[0] < first_val < plans[1]


def test_plain_batches_reach_training_step_as_the_same_objects():
    # Chunk and EvalBatch are plain classes so Lightning neither copies nor moves what they hold
    _, module, stream = _fit([3])
    assert len(module.seen) == 3
    assert all(a is b for a, b in zip(module.seen, stream.made))
