"""The optimisation recipe of a run: optimizer, learning-rate schedule and numeric precision.

Two recipes share one loop. ``adamw`` with a cosine schedule is mrl's default for small data. The
MRL paper trains ResNet-50 on ImageNet with the FFCV recipe (section 4.1, appendix C): SGD with
momentum, weight decay, label smoothing and a decaying schedule; ``sgd`` with ``cosine`` or
``step`` (x ``lr_gamma`` every ``lr_step_epochs``, torchvision's classic ResNet schedule) covers it.
The learning rate is a pure function of the step, so a resumed run continues exactly.

Mixed precision follows PyTorch's AMP: bf16 or fp16 autocast around the forward pass; fp16 also
scales the loss with a GradScaler (bf16 has fp32's range and needs none). The loss is computed in
fp32 from the logits.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch

from mrl.errors import MRLError

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_optimizer(name: str, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float,
                   momentum: float) -> torch.optim.Optimizer:
    """AdamW (``momentum`` unused) or SGD with momentum."""
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise MRLError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up, then cosine decay to 0 (a pure function of the step, so resume is exact)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def step_lr_at(step: int, steps_per_epoch: int, warmup_steps: int, base_lr: float, step_epochs: int, gamma: float) -> float:
    """Linear warm-up, then ``base_lr * gamma ** (epoch // step_epochs)``.

    Example:
        >>> [step_lr_at(s, 10, 0, 1.0, 2, 0.1) for s in (0, 19, 20, 40)]
        [1.0, 1.0, 0.1, 0.010000000000000002]
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    return base_lr * gamma ** ((step // steps_per_epoch) // step_epochs)


class Precision:
    """Autocast and (fp16 only) loss scaling for one device.

    Args:
        name: ``fp32``, ``bf16`` or ``fp16``.
        device: where the model runs.
    """

    def __init__(self, name: str, device: torch.device) -> None:
        if name not in PRECISIONS:
            raise MRLError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
        self.dtype = PRECISIONS[name]
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" else None

    def autocast(self) -> contextlib.AbstractContextManager:
        """A context for the forward pass: autocast to the chosen dtype, or nothing for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Optimizer step (skipped by the scaler when fp16 gradients overflowed)."""
        if self.scaler is None:
            optimizer.step()
        else:
            self.scaler.step(optimizer)
            self.scaler.update()
