"""The slimmable-network baseline (Yu et al., ICLR 2019), switched at the representation layer.

MRL paper, section 4.1 (Figure 2, "Slim. Net"): one network trained jointly at several widths,
evaluated at each width m. What is slimmed here, exactly: the final layer of the backbone, the one
that outputs the representation (MLP: Linear(512, d) -> BN -> ReLU; ResNet: 1x1 conv to d
channels -> BN -> ReLU -> pool). At width m only its first m output units are computed (the slice
W[:m] of its weight), followed by a *private* BatchNorm for that width (Yu et al.'s switchable
BN: its own scale, shift and running statistics) and a private linear head on the m units. The
trunk below is shared at full width. Training sums the cross-entropy of every width in each step,
which is Yu et al.'s Algorithm 1 (gradients of all widths accumulated before one update).

How this differs from MRL: MRL has one BatchNorm over all d units, so z[:m] is literally the
first m coordinates of one vector and a single forward pass yields every size; here the width-m
representation has its own normalisation, so the d-dim vector's prefix is *not* the width-m
representation, and each size needs its own pass through the last layer and its own stored
vector. Because BatchNorm acts per unit, the two differ only in those per-width affine maps and
running statistics; a slimmable network that also narrowed the trunk (Yu et al.'s full setting)
is not built here.

Runs use the layout and checkpoint format of :mod:`mrl.training` (config.json with
``extra={"method": "slimmable"}``, manifest.json, per-epoch safetensors, metrics.jsonl), so
:func:`mrl.experiments.run_status` and :func:`mrl.training.load_weights` work on them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mrl.baselines.parts import epoch_batches, eval_record, split_backbone, steps_per_epoch
from mrl.config import TrainConfig
from mrl.data import Dataset, load_dataset
from mrl.errors import MRLError
from mrl.artifacts import lock
from mrl.evaluation import knn1_accuracy, topk_accuracy
from mrl.loop import Loop, Position
from mrl.losses import MatryoshkaLoss
from mrl.models import create_model
from mrl.nesting import validate_nesting
from mrl.runs import (
    METRICS_FILE, check_new_run, clean_stale, load_config, load_weights, read_run, restore_checkpoint, save_checkpoint,
    save_eval, start_run,
)
from mrl.training import device_from_env, lr_at

METHOD = "slimmable"


class SlimmableClassifier(nn.Module):
    """A backbone whose representation layer switches between widths, with switchable BN and heads.

    Args:
        backbone: an ``mlp`` or ``resnet`` backbone of width d (its final BatchNorm is replaced by
            one BatchNorm per width).
        num_classes: C.
        widths: ascending widths m (the largest at most d).

    Shape:
        forward: input -> logits [G, B, C]; embed(x, m): input -> z_m [B, m]

    Example:
        >>> from mrl.models import MLP
        >>> net = SlimmableClassifier(MLP(784, 32), 10, [8, 32])
        >>> net(torch.zeros(4, 1, 28, 28)).shape, net.embed(torch.zeros(4, 1, 28, 28), 8).shape
        (torch.Size([2, 4, 10]), torch.Size([4, 8]))
    """

    def __init__(self, backbone: nn.Module, num_classes: int, widths: Sequence[int]) -> None:
        super().__init__()
        parts = split_backbone(backbone)
        self.widths = validate_nesting(widths, backbone.num_features)
        self.pool = parts.pool
        self.trunk = parts.trunk
        self.last = parts.last[0]
        bn = nn.BatchNorm2d if self.pool else nn.BatchNorm1d
        self.norms = nn.ModuleList(bn(m) for m in self.widths)
        self.heads = nn.ModuleList(nn.Linear(m, num_classes) for m in self.widths)
        self._finish = parts.finish

    @property
    def nesting(self) -> list[int]:
        return self.widths

    def _z(self, a: torch.Tensor, index: int) -> torch.Tensor:
        m = self.widths[index]
        return self._finish(torch.relu(self.norms[index](a[:, :m])))

    def embed(self, x: torch.Tensor, m: int) -> torch.Tensor:
        """Representation at width m [B, m] (m must be one of ``widths``)."""
        if m not in self.widths:
            raise MRLError(f"width {m} is not one of this network's widths {self.widths}")
        # Slicing the output of the full layer equals applying the sliced weight W[:m]: each output
        # unit depends only on its own row.
        return self._z(self.last(self.trunk(x)), self.widths.index(m))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.last(self.trunk(x))
        return torch.stack([head(self._z(a, g)) for g, head in enumerate(self.heads)])


def slimmable_config(**settings) -> TrainConfig:
    """A TrainConfig marked as a slimmable run (mode must be mrl; the nesting are the widths)."""
    extra = dict(settings.pop("extra", None) or {})
    extra["method"] = METHOD
    return TrainConfig(mode="mrl", extra=extra, **settings)


def build_slimmable(config: TrainConfig, data: Dataset) -> SlimmableClassifier:
    arch = config.arch or ("resnet" if data.kind == "image" else "mlp")
    if arch == "resnet":
        backbone = create_model("resnet", in_channels=data.input_shape[0], num_features=config.rep_dim)
    else:
        backbone = create_model("mlp", in_features=math.prod(data.input_shape), num_features=config.rep_dim,
                                rep_activation=config.rep_activation)
    return SlimmableClassifier(backbone, data.num_classes, config.nesting)


def _check_config(config: TrainConfig) -> None:
    if config.extra.get("method") != METHOD or config.mode != "mrl":
        raise MRLError(f"not a slimmable config (need mode mrl and extra method {METHOD!r}); build it with slimmable_config()")


def train_slimmable(
    config: TrainConfig, out: str | Path, resume: bool = False, progress: bool = True, data: Dataset | None = None,
) -> Path:
    """Train a slimmable network into run directory ``out`` (single process; resumable per epoch).

    Same recipe as :func:`mrl.training.train`: AdamW, warm-up + cosine :func:`~mrl.training.lr_at`,
    the same seeded shuffling and augmentation per epoch.
    """
    _check_config(config)
    out = Path(out)
    check_new_run(config, out, resume)
    with lock(out):
        return _train_slimmable(config, out, resume, progress, data)


def _train_slimmable(config: TrainConfig, out: Path, resume: bool, progress: bool, data: Dataset | None) -> Path:
    data = data if data is not None else load_dataset(config.data, config.data_dir, config.max_train, streaming=False)
    device = device_from_env()
    if resume:
        clean_stale(out)
    else:
        start_run(out, config)
    torch.manual_seed(config.seed)
    model = build_slimmable(config, data).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start_epoch, step = restore_checkpoint(model, optimizer, out) if resume else (0, 0)
    criterion = MatryoshkaLoss(nesting=config.nesting, weights=config.loss_weights).to(device)
    steps = steps_per_epoch(config, data)
    total_steps = steps * config.epochs
    warmup = int(config.warmup_epochs * steps)

    def backward(batch: tuple[torch.Tensor, torch.Tensor], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        model.train()
        x, y = batch
        per_size = criterion.per_size(model(x.to(device)), y.to(device))
        loss = (criterion.weights * per_size).sum()
        if torch.isfinite(loss):
            loss.backward()
        return loss.detach(), per_size.detach()

    def end_epoch(position: Position, mean_losses: torch.Tensor) -> dict:
        val_top1 = topk_accuracy(_predict(model, data.val.x, device), data.val.y, 1)
        return {
            "epoch": position.epoch,
            "loss_per_size": {str(m): v for m, v in zip(config.nesting, mean_losses.tolist())},
            "val_top1": {str(m): float(v) for m, v in zip(config.nesting, val_top1)},
            "seconds": time.time() - loop.epoch_started,
        }

    loop = Loop(
        optimizer, lambda step: lr_at(step, total_steps, warmup, config.lr), backward, config.nesting,
        what="slimmable training", desc="slimmable epoch", progress=progress, metrics=out / METRICS_FILE,
        checkpoint=lambda position: save_checkpoint(out, model, optimizer, position.epoch, position.step),
    )
    loop.run(lambda epoch, first: epoch_batches(config, data, epoch), config.epochs, steps, Position(start_epoch, step),
             end_epoch=end_epoch)
    return out


@torch.no_grad()
def _predict(model: SlimmableClassifier, x: torch.Tensor, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)], dim=1)


@torch.no_grad()
def _embed(model: SlimmableClassifier, x: torch.Tensor, m: int, device: torch.device, batch_size: int = 1024) -> np.ndarray:
    model.eval()
    return torch.cat([model.embed(x[i : i + batch_size].to(device), m).cpu() for i in range(0, len(x), batch_size)]).numpy()


def evaluate_slimmable(run_dir: str | Path, data: Dataset | None = None, progress: bool = False) -> dict:
    """Write RUN_DIR/eval.json: test top-1 / top-5 of each width's head and 1-NN on each width's z_m."""
    run_dir = Path(run_dir)
    read_run(run_dir, verify=[])  # a missing or foreign folder is refused before the lock creates anything
    with lock(run_dir):
        return _evaluate_slimmable(run_dir, data, progress)


def _evaluate_slimmable(run_dir: Path, data: Dataset | None, progress: bool) -> dict:
    config = load_config(run_dir)
    _check_config(config)
    data = data if data is not None else load_dataset(config.data, config.data_dir, config.max_train, streaming=False)
    device = device_from_env()
    model = build_slimmable(config, data)
    load_weights(model, run_dir)
    model = model.to(device).eval()
    logits = _predict(model, data.test.x, device)
    knn = {}
    for m in tqdm(config.nesting, desc="slimmable 1-NN", disable=not progress, leave=False):
        z_train, z_test = _embed(model, data.train.x, m, device), _embed(model, data.test.x, m, device)
        knn.update(knn1_accuracy(z_train, data.train.y.numpy(), z_test, data.test.y.numpy(), [m]))
    result = eval_record(config.nesting, logits, data.test.y, knn, METHOD)
    save_eval(run_dir, result)
    return result
