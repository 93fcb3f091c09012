"""The classifier trainer for MRL, MRL-E and FF runs (on :mod:`mrl.loop`): single process or DistributedDataParallel.

One run is one directory, laid out and checkpointed by :mod:`mrl.runs` (a streamed image folder's
class list is saved with it). A checkpoint is written
after every epoch and committed by the run's manifest only once both tensor files are on disk, so
a run killed at any moment resumes from its last complete epoch. Shuffling and
augmentation draw from a generator seeded by (seed, epoch) and the learning rate is a function of
the step, so a resumed run ends with the same weights as an uninterrupted one.

Under ``torchrun`` (WORLD_SIZE > 1) each rank takes an equal shard of every epoch's permutation and
a per-rank batch of batch_size / world_size; gradients are averaged by DDP (gloo on CPU, nccl on
GPU). Only rank 0 writes.

Batches come from :mod:`mrl.data.batches` (an in-memory split, or an image folder streamed by
DataLoader workers); the optimizer, schedule and mixed precision from :mod:`mrl.recipe`.

With nested widths (``TrainConfig.widths``, MatFormer) each step sums the Matryoshka loss of every
width, or of the widths sampled for that step (:func:`mrl.models.widths.widths_for_step`);
metrics.jsonl's losses are then sums over widths and its val top-1 is the full width's.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from mrl.config import TrainConfig
from mrl.data import Dataset, StreamingDataset, load_dataset
from mrl.data.batches import eval_batches, training_batches
from mrl.errors import MRLError
from mrl.artifacts import lock
from mrl.loop import Loop, Position
from mrl.losses import MatryoshkaLoss, distillation_per_size
from mrl.models import MatryoshkaClassifier, NestedWidthMLP, create_model
from mrl.models.widths import widths_for_step
from mrl.recipe import Precision, lr_at, make_optimizer, step_lr_at
from mrl.runs import (
    CLASSES_FILE,
    METRICS_FILE,
    check_new_run,
    clean_stale,
    read_classes,
    restore_checkpoint,
    save_checkpoint,
    start_run,
)

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


def setup_process(batch_size: int) -> tuple[torch.device, DistEnv]:
    """This process's device and process group (one GPU per rank under torchrun).

    The global ``batch_size`` must split evenly over the processes.
    """
    device = device_from_env()
    env = init_distributed(device)
    if env.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if batch_size % env.world_size:
        raise MRLError(f"batch-size {batch_size} must be divisible by the number of processes {env.world_size}")
    return device, env


def build_model(config: TrainConfig, data: Dataset | StreamingDataset) -> MatryoshkaClassifier:
    """The backbone named by the config (resnet for images, mlp for vectors) with its heads.

    Image backbones (resnet, resnet50, timm/<name>) refuse images smaller than their total stride.
    """
    arch = config.arch or ("resnet" if data.kind == "image" else "mlp")
    if arch != "mlp" and (config.widths is not None or config.hidden is not None):
        raise MRLError("widths and hidden apply to the mlp backbone; pass --arch mlp")
    hidden = {} if config.hidden is None else {"hidden": config.hidden}
    if arch == "mlp" and config.widths is not None:
        backbone = NestedWidthMLP(
            math.prod(data.input_shape), config.rep_dim, rep_activation=config.rep_activation, **hidden,
            norm=config.width_norm, widths=config.widths,
        )
    elif arch == "mlp":
        backbone = create_model(
            "mlp", in_features=math.prod(data.input_shape), num_features=config.rep_dim,
            rep_activation=config.rep_activation, **hidden,
        )
    else:
        if len(data.input_shape) != 3:
            raise MRLError(f"arch {arch} needs images [C, H, W], got inputs of shape {data.input_shape}")
        backbone = create_model(arch, in_channels=data.input_shape[0], num_features=config.rep_dim)
        smallest = getattr(backbone, "min_image_size", 1)
        if min(data.input_shape[1:]) < smallest:
            raise MRLError(
                f"image size {data.input_shape[1]}x{data.input_shape[2]} is too small for arch {arch}, which needs "
                f"at least {smallest}x{smallest}; raise --image-size"
            )
    return MatryoshkaClassifier(backbone, data.num_classes, config.nesting, tied=config.tied)


def check_classes(run_dir: Path, classes: list[str]) -> None:
    """Refuse to resume a run on a streamed folder whose class list differs from the saved one."""
    if read_classes(run_dir) != classes:
        raise MRLError(f"cannot resume {run_dir}: the data's classes differ from the run's {CLASSES_FILE}")


@torch.no_grad()
def val_top1(model: MatryoshkaClassifier, data: Dataset | StreamingDataset, device: torch.device, workers: int,
             precision: Precision) -> torch.Tensor:
    """Top-1 accuracy per nesting size [G] on the validation split, streamed in batches."""
    model.eval()
    correct = torch.zeros(len(model.nesting), dtype=torch.long)
    for x, y in eval_batches(data.val, device, workers=workers):
        with precision.autocast():
            logits = model(x)
        correct += (logits.float().argmax(-1).cpu() == y).sum(dim=1)
    return correct.float() / len(data.val)


def param_groups(model: MatryoshkaClassifier, config: TrainConfig) -> list[dict]:
    """Backbone and heads as two optimizer groups; ``lr_scale`` multiplies the scheduled rate per group."""
    return [
        {"params": list(model.backbone.parameters()), "lr_scale": 1.0},
        {"params": list(model.head.parameters()), "lr_scale": config.head_lr_scale},
    ]


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


def width_losses(criterion: MatryoshkaLoss, outputs: list[torch.Tensor], target: torch.Tensor,
                 distill: float = 0.0, weights: Sequence[float] | None = None) -> torch.Tensor:
    """Loss per nesting size [G] (not yet weighted by size), summed over the widths run in a step.

    ``outputs`` holds each width's logits [G, B, C], ascending, the full width last when ``distill``
    is set: every smaller width then takes ``(1 - distill)`` of its label loss plus ``distill`` of
    its cross-entropy against the full width's detached predictions at the same size
    (:func:`~mrl.losses.distillation_per_size`); the full width learns from the labels alone.
    ``weights`` (one per output; None: all 1) scales each width's term of the sum.
    """
    weights = [1.0] * len(outputs) if weights is None else list(weights)
    if len(weights) != len(outputs):
        raise MRLError(f"width weights need one value per width run ({len(outputs)}), got {weights}")
    if not distill:
        return sum(c * criterion.per_size(logits, target) for c, logits in zip(weights, outputs))
    teacher = outputs[-1]
    return weights[-1] * criterion.per_size(teacher, target) + sum(
        c * ((1 - distill) * criterion.per_size(logits, target) + distill * distillation_per_size(logits, teacher))
        for c, logits in zip(weights, outputs[:-1])
    )


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
    device, env = setup_process(config.batch_size)
    out = Path(out)
    if env.is_main:
        check_new_run(config, out, resume)
    data = data if data is not None else load_dataset(
        config.data, config.data_dir, config.max_train, image_size=config.image_size, check_images=env.is_main
    )
    if config.nesting[-1] > config.rep_dim:
        raise MRLError(f"nesting size {config.nesting[-1]} is larger than the representation size {config.rep_dim}")
    per_rank = config.batch_size // env.world_size
    if per_rank % config.accumulate:
        raise MRLError(f"the per-process batch {per_rank} must be divisible by accumulate {config.accumulate}")
    torch.manual_seed(config.seed)
    model = build_model(config, data).to(device)  # before anything is written: it checks arch and image size
    if config.arch is None and data.kind == "image" and env.is_main and not resume:
        # The default image backbone costs ~30x the MLP's compute per step (benchmarks/train_cost.py);
        # 1 epoch on 3,000 images leaves it near chance where the MLP reaches ~0.66 top-1.
        log.warning("training the default image backbone 'resnet', about 30x the compute per step of --arch mlp; "
                    "short runs (a few epochs on a few thousand images) may stay near chance")
    batches = training_batches(
        data.train, per_rank, env.rank, env.world_size, config.seed, config.augment and data.kind == "image",
        config.workers,
    )
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if resume:
            clean_stale(out)
            if isinstance(data, StreamingDataset):
                check_classes(out, data.classes)
        else:
            start_run(out, config, classes=data.classes if isinstance(data, StreamingDataset) else None)
    if env.world_size > 1:
        dist.barrier()

    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config.optimizer, param_groups(model, config), config.lr, config.weight_decay, config.momentum)
    precision = Precision(config.precision, device)
    start_epoch, step = restore_checkpoint(model, optimizer, out, precision.scaler) if resume else (0, 0)
    ddp_model: nn.Module = (
        nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            # sampled widths leave the switchable BatchNorms of the other widths without gradient
            find_unused_parameters=config.width_sampling != "all",
        )
        if env.world_size > 1
        else model
    )
    forward = torch.compile(ddp_model) if config.compile else ddp_model
    criterion = MatryoshkaLoss(
        nn.CrossEntropyLoss(label_smoothing=config.label_smoothing), nesting=config.nesting, weights=config.loss_weights
    ).to(device)

    steps_per_epoch = batches.steps_per_epoch
    total_steps = steps_per_epoch * config.epochs
    warmup = int(config.warmup_epochs * steps_per_epoch)

    def lr(step: int) -> float:
        if config.schedule == "cosine":
            return lr_at(step, total_steps, warmup, config.lr)
        return step_lr_at(step, steps_per_epoch, warmup, config.lr, config.lr_step_epochs, config.lr_gamma)

    def backward(batch: tuple[torch.Tensor, torch.Tensor], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        if config.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        ddp_model.train()
        loss_sum, per_size = torch.zeros((), device=device), torch.zeros(len(config.nesting), device=device)
        for k, (xk, yk) in enumerate(zip(x.chunk(config.accumulate), y.chunk(config.accumulate))):
            # DDP averages gradients only on the last micro-batch of a step.
            last = k == config.accumulate - 1
            sync = ddp_model.no_sync() if env.world_size > 1 and not last else contextlib.nullcontext()
            with sync:
                with precision.autocast():
                    if config.widths is None:
                        outputs = [forward(xk)]
                    else:  # MatFormer: the Matryoshka loss of this step's widths (all, or sampled)
                        step_widths = widths_for_step(
                            config.widths, config.width_sampling, config.width_samples, config.seed, step)
                        outputs = [forward(xk, width=w) for w in step_widths]
                part = width_losses(criterion, [logits.float() for logits in outputs], yk, config.width_distill,
                                    weights=None if config.widths is None or config.width_weights is None
                                    else [config.width_weights[config.widths.index(w)] for w in step_widths])
                loss = (criterion.weights * part).sum()
                if not torch.isfinite(loss):  # a non-finite micro-batch stops the step before its backward
                    return loss.detach(), part.detach()
                precision.backward(loss / config.accumulate if config.accumulate > 1 else loss)
            loss_sum += loss.detach() / config.accumulate
            per_size += part.detach() / config.accumulate
        return loss_sum, per_size

    def end_epoch(position: Position, mean_losses: torch.Tensor) -> dict | None:
        if not env.is_main:
            return None
        val_acc = val_top1(model, data, device, config.workers, precision)
        record = {
            "epoch": position.epoch,
            "loss": float(sum(w * v for w, v in zip(criterion.weights.tolist(), mean_losses.tolist()))),
            "loss_per_size": {str(m): v for m, v in zip(config.nesting, mean_losses.tolist())},
            "val_top1": {str(m): float(v) for m, v in zip(config.nesting, val_acc)},
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": time.time() - loop.epoch_started,
        }
        if progress:
            tqdm.write(
                f"epoch {position.epoch}/{config.epochs}  loss {record['loss']:.4f}  val top-1 "
                + " ".join(f"{m}:{v:.3f}" for m, v in zip(config.nesting, val_acc.tolist()))
            )
        return record

    def checkpoint(position: Position) -> None:
        if env.is_main:
            save_checkpoint(out, model, optimizer, position.epoch, position.step,
                            scaler=None if precision.scaler is None else precision.scaler.state_dict())
        if env.world_size > 1:
            dist.barrier()
        if on_epoch_end is not None:
            on_epoch_end(position.epoch)

    loop = Loop(
        optimizer, lr, backward, config.nesting, step_optimizer=lambda: precision.step(optimizer), desc="epoch",
        progress=progress and env.is_main, metrics=out / METRICS_FILE if env.is_main else None, checkpoint=checkpoint,
    )
    loop.run(lambda epoch, first: batches.epoch(epoch, device), config.epochs, steps_per_epoch, Position(start_epoch, step), end_epoch=end_epoch)
    return out
