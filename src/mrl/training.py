"""The training loop for MRL, MRL-E and FF runs: single process or DistributedDataParallel.

One run is one directory, laid out and checkpointed by :mod:`mrl.runs`. A checkpoint is written
after every epoch and committed by the run's manifest only once both tensor files are on disk, so
a run killed at any moment resumes from its last complete epoch. Shuffling and
augmentation draw from a generator seeded by (seed, epoch) and the learning rate is a function of
the step, so a resumed run ends with the same weights as an uninterrupted one.

Under ``torchrun`` (WORLD_SIZE > 1) each rank takes an equal shard of every epoch's permutation and
a per-rank batch of batch_size / world_size; gradients are averaged by DDP (gloo on CPU, nccl on
GPU). Only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from mrl.config import TrainConfig
from mrl.data import Dataset, load_dataset
from mrl.errors import MRLError
from mrl.artifacts import lock
from mrl.io import append_jsonl, read_jsonl
from mrl.losses import MatryoshkaLoss
from mrl.models import MatryoshkaClassifier, create_model
from mrl.runs import METRICS_FILE, check_new_run, clean_stale, restore_checkpoint, save_checkpoint, start_run

log = logging.getLogger(__name__)


@dataclass
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def device_from_env() -> torch.device:
    """TORCH_DEVICE if set (timm's convention), else CUDA when available, else CPU."""
    name = os.environ.get("TORCH_DEVICE")
    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def init_distributed(device: torch.device) -> DistEnv:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    env = DistEnv(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return env


def build_model(config: TrainConfig, data: Dataset) -> MatryoshkaClassifier:
    """The backbone named by the config (resnet for images, mlp for vectors) with its heads."""
    arch = config.arch or ("resnet" if data.kind == "image" else "mlp")
    if arch == "resnet":
        if len(data.input_shape) != 3:
            raise MRLError(f"arch resnet needs images [C, H, W], got inputs of shape {data.input_shape}")
        backbone = create_model("resnet", in_channels=data.input_shape[0], num_features=config.rep_dim)
    else:
        backbone = create_model("mlp", in_features=math.prod(data.input_shape), num_features=config.rep_dim)
    return MatryoshkaClassifier(backbone, data.num_classes, config.nesting, tied=config.tied)


def augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to ``max_shift`` pixels (zero padding), per batch row."""
    b = x.shape[0]
    flip = torch.rand(b, generator=generator) < 0.5
    x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    shifts = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator)
    padded = nn.functional.pad(x, (max_shift,) * 4)
    h, w = x.shape[-2:]
    rows = (torch.arange(h).view(1, h) + max_shift + shifts[:, :1]).view(b, 1, h, 1).expand(b, x.shape[1], h, w + 2 * max_shift)
    out = padded.gather(2, rows)
    cols = (torch.arange(w).view(1, w) + max_shift + shifts[:, 1:]).view(b, 1, 1, w).expand(b, x.shape[1], h, w)
    return out.gather(3, cols)


def lr_at(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up, then cosine decay to 0 (a pure function of the step, so resume is exact)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str = "") -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as flat safetensors entries ``{prefix}{index}.{key}``."""
    tensors = {}
    for idx, slot in optimizer.state_dict()["state"].items():
        for key, value in slot.items():
            tensors[f"{prefix}{idx}.{key}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return tensors


def load_optimizer_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str = "",
    param_groups: list[dict] | None = None,
) -> None:
    """Inverse of :func:`optimizer_tensors`; entries without ``prefix`` are ignored.

    ``param_groups`` (as saved in JSON) restores hyper-parameters too; by default the optimizer's
    current groups are kept.
    """
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix):
            idx, key = name[len(prefix) :].split(".", 1)
            state.setdefault(int(idx), {})[key] = value
    groups = param_groups if param_groups is not None else optimizer.state_dict()["param_groups"]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


@torch.no_grad()
def predict_logits(model: MatryoshkaClassifier, x: torch.Tensor, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    """Per-size logits [G, N, C] in eval mode."""
    model.eval()
    out = [model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out, dim=1)


def train(
    config: TrainConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    data: Dataset | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
) -> Path:
    """Train a run into ``out``; with ``resume`` continue from its last complete epoch.

    Returns the run directory. Under torchrun, every rank calls this; only rank 0 writes, holding
    the run's lock so that a second writer of the same run fails at once.
    """
    check_new_run(config, out, resume)  # before the lock creates ``out``
    writes = int(os.environ.get("RANK", "0")) == 0
    with lock(out) if writes else contextlib.nullcontext():
        return _train(config, out, resume, progress, data, on_epoch_end)


def _train(
    config: TrainConfig,
    out: str | Path,
    resume: bool,
    progress: bool,
    data: Dataset | None,
    on_epoch_end: Callable[[int], None] | None,
) -> Path:
    device = device_from_env()
    env = init_distributed(device)
    if env.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if config.batch_size % env.world_size:
        raise MRLError(f"batch-size {config.batch_size} must be divisible by the number of processes {env.world_size}")
    out = Path(out)
    if env.is_main:
        check_new_run(config, out, resume)
    data = data if data is not None else load_dataset(config.data, config.data_dir, config.max_train)
    if config.nesting[-1] > config.rep_dim:
        raise MRLError(f"nesting size {config.nesting[-1]} is larger than the representation size {config.rep_dim}")
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if resume:
            clean_stale(out)
        else:
            start_run(out, config)
    if env.world_size > 1:
        dist.barrier()

    torch.manual_seed(config.seed)
    model = build_model(config, data).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start_epoch, step = restore_checkpoint(model, optimizer, out) if resume else (0, 0)
    ddp_model: nn.Module = (
        nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if env.world_size > 1
        else model
    )
    criterion = MatryoshkaLoss(nesting=config.nesting, weights=config.loss_weights).to(device)

    n = len(data.train)
    per_rank = config.batch_size // env.world_size
    shard = n // env.world_size
    steps_per_epoch = max(1, shard // per_rank)
    total_steps = steps_per_epoch * config.epochs
    warmup = int(config.warmup_epochs * steps_per_epoch)
    use_augment = config.augment and data.kind == "image"

    for epoch in range(start_epoch, config.epochs):
        started = time.time()
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=gen)[: shard * env.world_size]
        mine = perm[env.rank :: env.world_size]
        ddp_model.train()
        sums = torch.zeros(len(config.nesting))
        bar = tqdm(
            range(steps_per_epoch), desc=f"epoch {epoch + 1}/{config.epochs}", disable=not (progress and env.is_main),
            leave=False, dynamic_ncols=True,
        )
        for i in bar:
            idx = mine[i * per_rank : (i + 1) * per_rank]
            x, y = data.train.x[idx], data.train.y[idx]
            if use_augment:
                x = augment(x, gen)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, total_steps, warmup, config.lr)
            logits = ddp_model(x.to(device))
            per_size = criterion.per_size(logits, y.to(device))
            loss = (criterion.weights * per_size).sum()
            if not torch.isfinite(loss):
                raise MRLError(f"training diverged at epoch {epoch + 1}, step {i}: loss is {loss.item()}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            sums += per_size.detach().cpu()
            if i % 10 == 0:
                bar.set_postfix_str(" ".join(f"{m}:{v:.3f}" for m, v in zip(config.nesting, (sums / (i + 1)).tolist())))
        if env.is_main:
            val_logits = predict_logits(model, data.val.x, device)
            val_top1 = (val_logits.argmax(-1) == data.val.y).float().mean(dim=1)
            mean_losses = (sums / steps_per_epoch).tolist()
            record = {
                "epoch": epoch + 1,
                "loss": float(sum(w * v for w, v in zip(criterion.weights.tolist(), mean_losses))),
                "loss_per_size": {str(m): v for m, v in zip(config.nesting, mean_losses)},
                "val_top1": {str(m): float(v) for m, v in zip(config.nesting, val_top1)},
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.time() - started,
            }
            # Metrics first, then the checkpoint: an attempt that dies between the two redoes the
            # epoch (with identical results) and must not log it twice.
            if not any(r.get("epoch") == epoch + 1 for r in read_jsonl(out / METRICS_FILE)):
                append_jsonl(out / METRICS_FILE, record)
            save_checkpoint(out, model, optimizer, epoch + 1, step)
            log.info("epoch %d: loss %.4f, val top-1 %s", epoch + 1, record["loss"], record["val_top1"])
            if progress:
                tqdm.write(
                    f"epoch {epoch + 1}/{config.epochs}  loss {record['loss']:.4f}  val top-1 "
                    + " ".join(f"{m}:{v:.3f}" for m, v in zip(config.nesting, val_top1.tolist()))
                )
        if env.world_size > 1:
            dist.barrier()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1)
    return out
