"""The training loop for MRL, MRL-E and FF runs: single process or DistributedDataParallel.

One run is one directory:

    RUN_DIR/config.json                  TrainConfig (written first)
    RUN_DIR/metrics.jsonl                one line per epoch: loss and val top-1 per size
                                         (with nested widths: loss summed over widths, top-1 at full width)
    RUN_DIR/checkpoints/model-NNNN.safetensors, optim-NNNN.safetensors
    RUN_DIR/state.json                   the last complete checkpoint (written last, atomically)

A checkpoint is written after every epoch; ``state.json`` names it only once both tensor files are
on disk, so a run killed at any moment resumes from its last complete epoch. Shuffling and
augmentation draw from a generator seeded by (seed, epoch) and the learning rate is a function of
the step, so a resumed run ends with the same weights as an uninterrupted one.

Under ``torchrun`` (WORLD_SIZE > 1) each rank takes an equal shard of every epoch's permutation and
a per-rank batch of batch_size / world_size; gradients are averaged by DDP (gloo on CPU, nccl on
GPU). Only rank 0 writes.
"""

from __future__ import annotations

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
from mrl.io import append_jsonl, load_tensors, read_json, read_jsonl, save_tensors, sha256_file, write_json
from mrl.losses import MatryoshkaLoss
from mrl.models import MatryoshkaClassifier, NestedWidthMLP, create_model

log = logging.getLogger(__name__)
CONFIG_FILE = "config.json"
STATE_FILE = "state.json"
METRICS_FILE = "metrics.jsonl"


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
    hidden = {} if config.hidden is None else {"hidden": config.hidden}
    if arch == "resnet" and (config.widths is not None or config.hidden is not None):
        raise MRLError("widths and hidden apply to the mlp backbone; pass --arch mlp")
    if arch == "resnet":
        if len(data.input_shape) != 3:
            raise MRLError(f"arch resnet needs images [C, H, W], got inputs of shape {data.input_shape}")
        backbone = create_model("resnet", in_channels=data.input_shape[0], num_features=config.rep_dim)
    elif config.widths is not None:
        backbone = NestedWidthMLP(math.prod(data.input_shape), config.rep_dim, **hidden)
    else:
        backbone = create_model("mlp", in_features=math.prod(data.input_shape), num_features=config.rep_dim, **hidden)
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


def is_run_dir(path: Path) -> bool:
    return (Path(path) / CONFIG_FILE).is_file()


def load_config(run_dir: str | Path) -> TrainConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MRLError(f"run directory {run_dir} does not exist")
    if not is_run_dir(run_dir):
        raise MRLError(f"{run_dir} is not a run directory (no {CONFIG_FILE}); create one with `mrl train`")
    values = read_json(run_dir / CONFIG_FILE)
    if not isinstance(values, dict) or "mode" not in values:
        raise MRLError(f"{run_dir} is not a run directory of `mrl train` (its {CONFIG_FILE} is not a training config)")
    return TrainConfig.from_dict(values)


def read_state(run_dir: Path) -> dict | None:
    path = Path(run_dir) / STATE_FILE
    if not path.exists():
        return None
    state = read_json(path)
    if not isinstance(state, dict) or "epochs_done" not in state:
        raise MRLError(f"{path} is not a training state file")
    return state


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


def load_weights(model: nn.Module, run_dir: str | Path) -> dict:
    """Load the last complete checkpoint of ``run_dir`` into ``model``; returns the state record."""
    run_dir = Path(run_dir)
    state = read_state(run_dir)
    if state is None:
        raise MRLError(f"{run_dir} has no finished epoch yet (no {STATE_FILE}); train it first")
    path = run_dir / state["model"]
    tensors = load_tensors(path)  # refuses pickles and other formats before anything else
    if sha256_file(path) != state["model_sha256"]:
        raise MRLError(f"{path} does not match the checksum in {STATE_FILE}; the checkpoint is corrupt")
    missing = set(model.state_dict()) - set(tensors)
    if missing:
        raise MRLError(f"{path} does not fit this model: missing {sorted(missing)[:3]}...")
    model.load_state_dict(tensors)
    return state


def save_checkpoint(run_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int, step: int) -> None:
    """Write model and optimizer of a finished epoch, then state.json naming them; drop older files."""
    ckpt = run_dir / "checkpoints"
    model_path = ckpt / f"model-{epoch:04d}.safetensors"
    optim_path = ckpt / f"optim-{epoch:04d}.safetensors"
    save_tensors(model_path, model.state_dict())
    save_tensors(optim_path, optimizer_tensors(optimizer))
    previous = read_state(run_dir)
    write_json(
        run_dir / STATE_FILE,
        {
            "epochs_done": epoch,
            "step": step,
            "model": str(model_path.relative_to(run_dir)),
            "model_sha256": sha256_file(model_path),
            "optimizer": str(optim_path.relative_to(run_dir)),
            "optimizer_sha256": sha256_file(optim_path),
            "optimizer_groups": {"param_groups": optimizer.state_dict()["param_groups"]},
        },
    )
    if previous is not None:  # the new state is on disk: older files are no longer needed
        for key in ("model", "optimizer"):
            old = run_dir / previous[key]
            if old.exists() and old.name not in (model_path.name, optim_path.name):
                old.unlink()


def restore_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, run_dir: Path) -> tuple[int, int]:
    """Load the last complete checkpoint into ``model`` and ``optimizer``; returns (epochs done, step).

    A run with no finished epoch yet starts from (0, 0).
    """
    state = read_state(run_dir)
    if state is None:
        return 0, 0
    load_weights(model, run_dir)
    optim_path = Path(run_dir) / state["optimizer"]
    tensors = load_tensors(optim_path)
    if sha256_file(optim_path) != state["optimizer_sha256"]:
        raise MRLError(f"{optim_path} does not match the checksum in {STATE_FILE}; the checkpoint is corrupt")
    load_optimizer_tensors(optimizer, tensors, param_groups=state["optimizer_groups"]["param_groups"])
    return state["epochs_done"], state["step"]


@torch.no_grad()
def predict_logits(model: MatryoshkaClassifier, x: torch.Tensor, device: torch.device, batch_size: int = 1024) -> torch.Tensor:
    """Per-size logits [G, N, C] in eval mode."""
    model.eval()
    out = [model(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out, dim=1)


def prepare_run(config: TrainConfig, out: str | Path, resume: bool) -> Path:
    """Check ``out`` and write config.json (rank 0 only); refuses to overwrite a run without --resume."""
    out = Path(out)
    if resume:
        if not is_run_dir(out):
            raise MRLError(f"cannot resume: {out} is not a run directory (no {CONFIG_FILE})")
        saved = load_config(out)
        if saved.to_dict() != config.to_dict():
            diff = {k: (v, config.to_dict()[k]) for k, v in saved.to_dict().items() if config.to_dict()[k] != v}
            raise MRLError(f"cannot resume {out}: its config differs in {sorted(diff)} (saved vs given: {diff})")
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MRLError(f"{out} already exists; pass --resume to continue that run or choose another --out")
    return out


def train(
    config: TrainConfig,
    out: str | Path,
    resume: bool = False,
    progress: bool = True,
    data: Dataset | None = None,
    on_epoch_end: Callable[[int], None] | None = None,
) -> Path:
    """Train a run into ``out``; with ``resume`` continue from its last complete epoch.

    Returns the run directory. Under torchrun, every rank calls this; only rank 0 writes.
    """
    device = device_from_env()
    env = init_distributed(device)
    if env.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if config.batch_size % env.world_size:
        raise MRLError(f"batch-size {config.batch_size} must be divisible by the number of processes {env.world_size}")
    out = Path(out)
    if env.is_main:
        prepare_run(config, out, resume)
    data = data if data is not None else load_dataset(config.data, config.data_dir, config.max_train)
    if config.nesting[-1] > config.rep_dim:
        raise MRLError(f"nesting size {config.nesting[-1]} is larger than the representation size {config.rep_dim}")
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            config.save(out / CONFIG_FILE)
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
            x, y = x.to(device), y.to(device)
            if config.widths is None:
                per_size = criterion.per_size(ddp_model(x), y)
            else:  # MatFormer: every width's Matryoshka loss in one step
                per_size = sum(criterion.per_size(ddp_model(x, width=w), y) for w in config.widths)
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
