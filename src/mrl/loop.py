"""The one training loop that mrl's trainers share (classifier, slimmable, retro-fit, LM, adapter, text).

nanoGPT keeps one loop; so does mrl. What every trainer does the same way lives here: iterating
epochs and steps from a resume position, the learning rate of each step (a pure function of the
global step, so a resumed run repeats the steps of an uninterrupted one exactly), zeroing
gradients, stopping with one line at the first non-finite loss, the progress bar, averaging the
logged values over an epoch, writing each metrics line once, and committing a checkpoint at the
boundaries the trainer asks for. A trainer supplies only what truly differs: its batches, the
forward and backward pass of one batch, how the optimizer steps (a GradScaler, gradient clipping)
and what it records at the end of an epoch.

Checkpoints go through the trainer's store (:func:`mrl.runs.save_checkpoint` for training runs,
:func:`mrl.lm.train.save_checkpoint` for LM runs); the loop decides when, the store owns the
files and the manifest that commits them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from mrl.errors import MRLError
from mrl.io import append_jsonl, read_jsonl

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Position:
    """Where a run stands: ``epoch`` epochs finished and ``step`` optimizer steps taken in all."""

    epoch: int = 0
    step: int = 0


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Give every parameter group ``lr`` times its ``lr_scale`` (1 where the group has none)."""
    for group in optimizer.param_groups:
        group["lr"] = group.get("lr_scale", 1.0) * lr


def log_once(path: str | os.PathLike, key: str, record: Mapping[str, Any], seen: set | None = None) -> bool:
    """Append ``record`` to the JSONL log ``path`` unless a line with the same ``record[key]`` is there.

    An attempt killed between its metrics line and its checkpoint redoes those steps with identical
    results on resume; the redone line must not appear twice. ``seen`` holds the ``key`` values
    already in the log and is kept up to date, so a caller that logs every step reads the log once
    (:meth:`Loop.run`) instead of at every line; without it the log is read. Returns whether the
    line was written.
    """
    if seen is None:
        seen = {r.get(key) for r in read_jsonl(path) if isinstance(r, dict)}
    if record[key] in seen:
        return False
    append_jsonl(path, record)
    seen.add(record[key])
    return True


@dataclass
class Loop:
    """One optimizer and the hooks of one trainer; :meth:`run` trains from a position.

    Args:
        optimizer: zeroed before, and stepped after, every batch.
        lr: the learning rate of a global step; each group gets ``lr * lr_scale``.
        backward: ``backward(batch, step)``, the forward and backward pass of one batch at global
            step ``step``; returns the loss (a scalar, checked to be finite before the optimizer
            steps) and the values averaged over the epoch [K].
        labels: names of the K values (nesting sizes, loss terms), shown on the progress bar.
        step_optimizer: how the optimizer steps; by default ``optimizer.step()``.
        what: the word of the divergence message ("training diverged at ...").
        desc: progress bar label.
        progress: show a progress bar per epoch.
        metrics: JSONL log that the records of ``end_step`` and ``end_epoch`` go to, each once.
        checkpoint: commits a checkpoint at a position, after that position's metrics line.
        checkpoint_every: commit one every this many steps and at the last step (step-based
            trainers); None: at the end of each epoch.
    """

    optimizer: torch.optim.Optimizer
    lr: Callable[[int], float]
    backward: Callable[[Any, int], tuple[torch.Tensor, torch.Tensor]]
    labels: Sequence[Any]
    step_optimizer: Callable[[], None] | None = None
    what: str = "training"
    desc: str = "train"
    progress: bool = True
    metrics: str | os.PathLike | None = None
    checkpoint: Callable[[Position], None] | None = None
    checkpoint_every: int | None = None
    epoch_started: float = field(default=0.0, init=False)  # time.time() when the current epoch began
    _logged: dict[str, set] = field(default_factory=dict, init=False, repr=False)  # key -> values in ``metrics``

    def run(
        self,
        batches: Callable[[int, int], Iterable[Any]],
        epochs: int,
        steps_per_epoch: int,
        start: Position = Position(),
        stop_at: int | None = None,
        end_step: Callable[[Position, torch.Tensor], Mapping[str, Any] | None] | None = None,
        end_epoch: Callable[[Position, torch.Tensor], Mapping[str, Any] | None] | None = None,
    ) -> Position:
        """Train from ``start`` to the end of epoch ``epochs`` (or global step ``stop_at``).

        Args:
            batches: ``batches(epoch, first)`` yields the batches of ``epoch`` from its batch
                index ``first`` on (0 unless a step-based run resumes mid-epoch).
            epochs: epochs of the whole run.
            steps_per_epoch: optimizer steps per epoch.
            start: the position to continue from (a restored checkpoint's, or the origin).
            stop_at: end after this global step, committing a checkpoint as an interruption
                would leave one.
            end_step: called after every step with the position and that step's values [K];
                a record it returns goes to ``metrics`` (keyed by "step").
            end_epoch: called after every epoch with the position and the epoch's mean values
                [K]; a record it returns goes to ``metrics`` (keyed by "epoch").

        Returns:
            The position reached.
        """
        position = start
        last = epochs * steps_per_epoch if stop_at is None else min(stop_at, epochs * steps_per_epoch)
        while position.step < last:
            epoch, first = divmod(position.step, steps_per_epoch)
            end = min(steps_per_epoch, last - epoch * steps_per_epoch)  # batch index this attempt stops at
            sums, count = torch.zeros(len(self.labels)), 0
            self.epoch_started = time.time()
            bar = tqdm(
                total=steps_per_epoch, initial=first, desc=f"{self.desc} {epoch + 1}/{epochs}",
                disable=not self.progress, leave=False, dynamic_ncols=True,
            )
            for index, batch in zip(range(first, end), batches(epoch, first)):
                values = self._step(batch, epoch, index, position.step)
                position = replace(position, step=position.step + 1)
                sums, count = sums + values, count + 1
                bar.update(1)
                if count % 10 == 1:
                    bar.set_postfix_str(" ".join(f"{k}:{v:.3f}" for k, v in zip(self.labels, (sums / count).tolist())))
                record = end_step(position, values) if end_step is not None else None
                if record is not None:
                    self._log(record, "step")
                if self.checkpoint is not None and self.checkpoint_every is not None and (
                        position.step % self.checkpoint_every == 0 or position.step == last):
                    self.checkpoint(position)
            bar.close()
            if count < end - first:
                raise MRLError(f"epoch {epoch + 1} yielded {first + count} batches, fewer than the {end} expected")
            if end < steps_per_epoch:  # stopped mid-epoch (``stop_at``): no epoch end
                break
            position = replace(position, epoch=epoch + 1)
            record = end_epoch(position, sums / count) if end_epoch is not None else None
            if record is not None:
                self._log(record, "epoch")
            if self.checkpoint is not None and self.checkpoint_every is None:
                self.checkpoint(position)
        return position

    def _step(self, batch: Any, epoch: int, index: int, step: int) -> torch.Tensor:
        set_learning_rate(self.optimizer, self.lr(step))
        self.optimizer.zero_grad(set_to_none=True)
        loss, values = self.backward(batch, step)
        if not torch.isfinite(loss):
            # Step-based runs number their steps from 1 (as metrics.jsonl does); epoch-based runs
            # name the epoch and the batch within it.
            where = f"step {step + 1}" if self.checkpoint_every is not None else f"epoch {epoch + 1}, step {index}"
            raise MRLError(f"{self.what} diverged at {where}: loss is {loss.item()}; lower --lr")
        if self.step_optimizer is not None:
            self.step_optimizer()
        else:
            self.optimizer.step()
        return values.detach().cpu()

    def _log(self, record: Mapping[str, Any], key: str) -> None:
        if self.metrics is not None:
            if key not in self._logged:  # read once per key, after any trimming done at resume
                self._logged[key] = {r.get(key) for r in read_jsonl(self.metrics) if isinstance(r, dict)}
            log_once(self.metrics, key, record, self._logged[key])
        log.info("%s %s: %s", key, record[key], {k: v for k, v in record.items() if k != key})
