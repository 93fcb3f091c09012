"""Fine-tune a sentence-transformers model with the Matryoshka loss: one process or ``torchrun``.

One text run is one directory:

    RUN/config.json                      TextTrainConfig (written first)
    RUN/model/                           the starting model as a sentence-transformers folder
    RUN/weights-SSSSSSS.safetensors      the model's weights after step SSSSSSS
    RUN/optimizer-SSSSSSS.safetensors    AdamW's state after that step
    RUN/metrics.jsonl                    one line per checkpoint: mean loss per size since the last
    RUN/manifest.json                    kind "text-run" (:mod:`mrl.artifacts`): sha256 of the
                                         config and the last checkpoint, the step, and the sha256 of
                                         every file of model/ (written last, atomically)

Readers verify the manifest before loading anything, so a checkpoint or model file changed after
the fact is refused; one writer holds the run's lock.

The loop is mrl's own rather than sentence-transformers' trainer, so that a resumed run ends with
the same weights as an uninterrupted one: batch order comes from a generator seeded by (seed,
epoch), dropout from a seed set per step, and the learning rate is a pure function of the step
(:func:`mrl.training.lr_at`). Under ``torchrun`` each rank embeds its B = batch_size / K pairs of
the global batch; :class:`~mrl.text.losses.TextPairLoss` gathers the embeddings so the loss is that
of the global batch, and the gradients are averaged over ranks. Only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mrl.artifacts import check_writable, lock, read_manifest, write_manifest
from mrl.config import config_from_dict
from mrl.errors import MRLError
from mrl.io import atomic_directory, load_tensors, read_json, save_tensors, sha256_file, write_json
from mrl.loop import Loop, Position
from mrl.nesting import validate_nesting
from mrl.validation import check_choice, check_float, check_int, check_seed
from mrl.text.losses import LOSSES, TextPairLoss
from mrl.text.model import embed_with_grad, embedding_dim, load_text_model
from mrl.text.pairs import Pairs, load_pairs
from mrl.training import load_optimizer_tensors, lr_at, optimizer_tensors, setup_process

FORMAT = "mrl-text-run"
KIND = "text-run"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
MODEL_DIR = "model"


@dataclass
class TextTrainConfig:
    """How a text run is trained; saved as RUN/config.json.

    Attributes:
        model: ``all-MiniLM-L6-v2`` or a local sentence-transformers folder.
        pairs: ``wordnet``, ``jeopardy`` or a JSONL file of (query, positive[, negative]).
        nesting: prefix sizes; None: d/16, d/8, d/4, d/2, d (24 ... 384 for MiniLM), the sizes
            where an unadapted model's prefixes fall apart.
        plain: train only the full size (the baseline the Matryoshka run is compared with).
        loss_weights: per-size weights c_m of the nested loss, one per nesting size; None: 1 at
            every size and ``full_size_weight`` at the full size.
        full_size_weight: c_d of the full size when ``loss_weights`` is None. 4, not the paper's
            equal weights (Kusupati et al. 2022, eq. 1): on WordNet (100 steps, 3 seeds) it keeps the
            full size within 1 nDCG@10 point of a plainly fine-tuned model, where equal weights
            trail it by 1.5, for 0.9 points at 24 dims and 0.2 at 48. Runs saved before this
            field trained with equal weights; their config reads as 1.
        loss: ``mnrl`` (in-batch negatives) or ``cosent``.
        scale: inverse temperature of the cosine similarities (sentence-transformers' 20).
        epochs: passes over the pairs (ends early at ``max_steps``).
        batch_size: global batch of pairs, split evenly across ranks; more in-batch negatives.
        max_steps: stop after this many steps (the learning-rate schedule spans them).
        lr: AdamW learning rate; sentence-transformers' default for fine-tuning.
        weight_decay: AdamW weight decay, as sentence-transformers' trainer.
        warmup_fraction: share of the steps with a linear warm-up (sentence-transformers' 0.1).
        max_seq_length: tokens per text; 64 holds almost every WordNet and Jeopardy text.
        save_every: steps between checkpoints (and lines of metrics.jsonl).
        seed: seed of the batch order and dropout.
    """

    model: str = "all-MiniLM-L6-v2"
    pairs: str = "wordnet"
    nesting: list[int] | None = None
    plain: bool = False
    loss_weights: list[float] | None = None
    full_size_weight: float = 4.0
    loss: str = "mnrl"
    scale: float = 20.0
    epochs: int = 1
    batch_size: int = 32
    max_steps: int | None = None
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    max_seq_length: int = 64
    save_every: int = 50
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TextTrainConfig:
        values = dict(values)
        if values.pop("format", FORMAT) != FORMAT:
            raise MRLError(f"not a text-run config (format is not {FORMAT!r})")
        return config_from_dict(cls, values, "text training").validate()

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **asdict(self)}

    def validate(self) -> TextTrainConfig:
        for name in ("epochs", "max_seq_length", "save_every"):
            check_int(name, getattr(self, name), min=1)
        check_int("batch_size", self.batch_size, min=2)  # in-batch negatives need two pairs
        if self.max_steps is not None:
            check_int("max_steps", self.max_steps, min=1)
        check_choice("loss", self.loss, LOSSES)
        check_float("lr", self.lr, min=0, min_open=True)
        check_float("scale", self.scale, min=0, min_open=True)
        check_float("weight_decay", self.weight_decay, min=0)
        self.full_size_weight = check_float("full_size_weight", self.full_size_weight, min=0, max=1e6, min_open=True)
        check_float("warmup_fraction", self.warmup_fraction, min=0, max=1, max_open=True)
        check_seed("seed", self.seed)
        if self.nesting is not None:
            self.nesting = validate_nesting(self.nesting)
        if self.loss_weights is not None:
            if self.plain:
                raise MRLError("loss weights apply to the nesting sizes of a Matryoshka run; a --plain run has one size")
            if not isinstance(self.loss_weights, list) or not self.loss_weights:
                raise MRLError(f"loss weights must be a non-empty list of numbers, got {self.loss_weights!r}")
            self.loss_weights = [check_float("every loss weight", w, min=0, max=1e6) for w in self.loss_weights]
            if not any(self.loss_weights):
                raise MRLError(f"loss weights must not all be 0, got {self.loss_weights}")
        return self

    def sizes(self, dim: int) -> list[int]:
        """The trained prefix sizes for a model of dimension ``dim`` (``[dim]`` for a plain run)."""
        nesting = self.nesting if self.nesting is not None else sorted({max(1, dim // f) for f in (16, 8, 4, 2, 1)})
        nesting = validate_nesting(nesting, dim)
        if nesting[-1] != dim:
            raise MRLError(f"the last nesting size must be the model's dimension {dim}, got {nesting}")
        if self.loss_weights is not None and len(self.loss_weights) != len(nesting):
            raise MRLError(f"loss weights need one value per nesting size {nesting}, got {self.loss_weights}")
        return [dim] if self.plain else nesting

    def weights(self, n_sizes: int) -> list[float]:
        """The per-size loss weights c_m of ``n_sizes`` trained sizes (``[1.0]`` for a plain run).

        Example:
            >>> TextTrainConfig().weights(5)
            [1.0, 1.0, 1.0, 1.0, 4.0]
        """
        if self.plain:
            return [1.0]
        if self.loss_weights is not None:
            return list(self.loss_weights)
        return [1.0] * (n_sizes - 1) + [self.full_size_weight]


def read_run_config(run: str | Path) -> TextTrainConfig:
    """The config of a text run directory."""
    run = Path(run)
    if not (run / CONFIG_FILE).is_file():
        raise MRLError(f"{run} is not a text run (no {CONFIG_FILE}); create one with `mrl text train`")
    values = read_json(run / CONFIG_FILE)
    if not isinstance(values, dict) or values.get("format") != FORMAT:
        raise MRLError(f"{run} is not a text run (its {CONFIG_FILE} is not a {FORMAT!r} config)")
    # Configs written before full_size_weight existed belong to runs trained with equal weights.
    values.setdefault("full_size_weight", 1.0)
    return TextTrainConfig.from_dict(values)


def read_state(run: Path) -> dict | None:
    """The verified manifest's record of the last checkpoint (step, file names), or None before the first."""
    if not (run / "manifest.json").is_file():
        return None
    manifest = read_manifest(run, KIND)
    step = manifest.meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        raise MRLError(f"{run}/manifest.json names no checkpoint step")
    weights, optim = _checkpoint_names(step)
    if not {CONFIG_FILE, weights, optim} <= set(manifest.files):
        raise MRLError(f"{run}/manifest.json does not list the checkpoint of step {step}")
    _verify_model_files(run, manifest.meta.get("model_files"))
    return {"step": step, "optimizer_groups": manifest.meta.get("optimizer_groups")}


def _checkpoint_names(step: int) -> tuple[str, str]:
    # Names derive from the step number, never from a path stored in a file.
    return f"weights-{step:07d}.safetensors", f"optimizer-{step:07d}.safetensors"


def _model_files(run: Path) -> dict[str, str]:
    folder = run / MODEL_DIR
    entries = sorted(folder.rglob("*"))
    links = ([folder] if folder.is_symlink() else []) + [p for p in entries if p.is_symlink()]
    if links:  # a path the run does not own would be read as its model (rglob does not descend a linked folder either)
        raise MRLError(f"{run}/{MODEL_DIR} holds symbolic links ({[str(p.relative_to(run)) for p in links[:3]]}); refusing to follow them")
    return {str(p.relative_to(folder)): sha256_file(p) for p in entries if p.is_file()}


def _verify_model_files(run: Path, expected: Any) -> None:
    if not isinstance(expected, dict) or not expected:
        raise MRLError(f"{run}/manifest.json lists no files of {MODEL_DIR}/")
    found = _model_files(run)
    if found != expected:
        changed = sorted(set(found) ^ set(expected) | {n for n in found if n in expected and found[n] != expected[n]})
        raise MRLError(f"{run}/{MODEL_DIR} does not match its manifest ({changed[:3]} added, removed or changed)")


def save_checkpoint(run: Path, model, optimizer: torch.optim.Optimizer, step: int, model_files: dict[str, str]) -> None:
    """Write weights and optimizer state of ``step``, then the manifest naming them; drop the previous ones."""
    previous = {p.name for p in run.glob("weights-*.safetensors")} | {p.name for p in run.glob("optimizer-*.safetensors")}
    weights, optim = _checkpoint_names(step)
    save_tensors(run / weights, model.state_dict())
    save_tensors(run / optim, optimizer_tensors(optimizer))
    write_manifest(run, KIND, [CONFIG_FILE, weights, optim], meta={
        "step": step, "optimizer_groups": optimizer.state_dict()["param_groups"], "model_files": model_files,
    })
    for name in previous - {weights, optim}:
        (run / name).unlink(missing_ok=True)


def load_run_model(run: str | Path, device: str | torch.device = "cpu"):
    """The fine-tuned ``SentenceTransformer`` of a text run (its last checkpoint), in eval mode.

    Raises:
        MRLError: not a text run, no checkpoint yet, or files that fail the manifest's checksums.
    """
    run = Path(run)
    config = read_run_config(run)
    state = read_state(run)
    if state is None:
        raise MRLError(f"{run} has no checkpoint yet (no manifest.json); train it first")
    model = load_text_model(run / MODEL_DIR, device=device, max_seq_length=config.max_seq_length)
    weights, _ = _checkpoint_names(state["step"])
    _load_weights(model, load_tensors(run / weights), run / weights)
    model.eval()
    return model


def _load_weights(model, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    if set(tensors) != set(expected) or any(tensors[k].shape != v.shape for k, v in expected.items()):
        raise MRLError(f"{path} does not fit the model of this run")
    model.load_state_dict(tensors)


def total_steps(config: TextTrainConfig, n_pairs: int) -> int:
    """Steps of the run: whole global batches per epoch times epochs, capped by ``max_steps``."""
    per_epoch = n_pairs // config.batch_size
    if per_epoch < 1:
        raise MRLError(f"{n_pairs} pairs are fewer than one batch of {config.batch_size}; lower --batch-size")
    steps = per_epoch * config.epochs
    return min(steps, config.max_steps) if config.max_steps is not None else steps


def batch_rows(config: TextTrainConfig, n_pairs: int, step: int) -> torch.Tensor:
    """Pair indices of the global batch of ``step`` [batch_size]: a pure function of (seed, step)."""
    per_epoch = n_pairs // config.batch_size
    epoch, i = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    return torch.randperm(n_pairs, generator=generator)[i * config.batch_size : (i + 1) * config.batch_size]


def train_step(model, loss_fn: TextPairLoss, pairs: Pairs, rows: Sequence[int]) -> torch.Tensor:
    """Forward and backward of one rank's rows; gradients averaged over ranks. Returns per-size losses [G]."""
    texts = [pairs.queries, pairs.positives] + ([pairs.negatives] if pairs.negatives is not None else [])
    columns = [embed_with_grad(model, [column[int(r)] for r in rows]) for column in texts]
    per_size = loss_fn.per_size(*columns)
    (loss_fn.matryoshka.weights * per_size).sum().backward()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world = dist.get_world_size()
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world
    return per_size.detach()


def _prepare_out(out: Path, config: TextTrainConfig, resume: bool) -> None:
    if resume:
        saved = read_run_config(out)
        if saved.to_dict() != config.to_dict():
            diff = sorted(k for k, v in saved.to_dict().items() if config.to_dict()[k] != v)
            raise MRLError(f"cannot resume {out}: its config differs in {diff}")
        if not (out / MODEL_DIR).is_dir():
            raise MRLError(f"cannot resume {out}: it has no {MODEL_DIR}/ folder")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MRLError(f"{out} already exists; pass --resume to continue that run or choose another --out")
    else:
        check_writable(out)


def train_text(
    config: TextTrainConfig, out: str | Path, resume: bool = False, progress: bool = True, stop_after: int | None = None,
) -> Path:
    """Train a text run into ``out`` (see the module docstring); with ``resume`` continue its last checkpoint.

    Args:
        config: the run's settings.
        out: run directory (created; must be new unless ``resume``).
        resume: continue from the run's last checkpoint; the config must equal the saved one.
        progress: show a progress bar (rank 0).
        stop_after: end after this global step, as an interruption would (a later resume finishes
            the run exactly as if it had not stopped).

    Returns:
        The run directory. Every input is checked before anything is written.
    """
    config.validate()
    out = Path(out)
    device, env = setup_process(config.batch_size)
    if env.is_main:
        _prepare_out(out, config, resume)
    state = read_state(out) if resume else None  # verified before anything of the run is loaded
    pairs = load_pairs(config.pairs)
    model = load_text_model(out / MODEL_DIR if resume else config.model, device=device, max_seq_length=config.max_seq_length)
    sizes = config.sizes(embedding_dim(model))
    steps = total_steps(config, len(pairs))
    loss_fn = TextPairLoss(sizes, loss=config.loss, scale=config.scale, weights=config.weights(len(sizes))).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    step = 0
    if state is not None:
        step = state["step"]
        weights, optim = _checkpoint_names(step)
        _load_weights(model, load_tensors(out / weights), out / weights)
        load_optimizer_tensors(optimizer, load_tensors(out / optim), param_groups=state["optimizer_groups"])

    with lock(out) if env.is_main else contextlib.nullcontext():
        if env.is_main and not resume:
            write_json(out / CONFIG_FILE, config.to_dict())
            with atomic_directory(out / MODEL_DIR) as tmp:
                model.save(str(tmp), safe_serialization=True)
        if env.world_size > 1:
            dist.barrier()
        model_files = _model_files(out) if env.is_main else {}
        _loop(config, out, model, loss_fn, optimizer, pairs, sizes, env, step, steps, stop_after, progress, model_files)
    if env.world_size > 1:
        dist.barrier()
    return out


def _loop(config, out, model, loss_fn, optimizer, pairs, sizes, env, step, steps, stop_after, progress, model_files) -> None:
    per_rank = config.batch_size // env.world_size
    per_epoch = len(pairs) // config.batch_size
    warmup = int(config.warmup_fraction * steps)
    end = steps if stop_after is None else min(steps, stop_after)
    sums, count, started = torch.zeros(len(sizes)), 0, time.time()  # since the last metrics line

    def batches(epoch: int, first: int) -> Iterator[torch.Tensor]:
        for global_step in range(epoch * per_epoch + first, (epoch + 1) * per_epoch):
            yield batch_rows(config, len(pairs), global_step)[env.rank * per_rank : (env.rank + 1) * per_rank]

    def backward(rows: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(config.seed * 1_000_003 + step)  # dropout is a function of the step: exact resume
        per_size = train_step(model, loss_fn, pairs, rows)
        return (loss_fn.matryoshka.weights.cpu() * per_size.cpu()).sum(), per_size

    def end_step(position: Position, per_size: torch.Tensor) -> dict | None:
        nonlocal sums, count, started
        sums, count = sums + per_size, count + 1
        if not env.is_main or (position.step % config.save_every and position.step != end):
            return None
        means, seconds = sums / count, time.time() - started
        sums, count, started = torch.zeros(len(sizes)), 0, time.time()
        return {"step": position.step, "loss": float(means.sum()),
                "loss_per_size": {str(m): float(v) for m, v in zip(sizes, means)},
                "lr": optimizer.param_groups[0]["lr"], "seconds": seconds}

    model.train()
    Loop(
        optimizer, lambda i: lr_at(i, steps, warmup, config.lr), backward, sizes, desc="mrl text train",
        progress=progress and env.is_main, metrics=out / METRICS_FILE if env.is_main else None,
        checkpoint=(lambda position: save_checkpoint(out, model, optimizer, position.step, model_files)) if env.is_main else None,
        checkpoint_every=config.save_every,
    ).run(batches, config.epochs, per_epoch, Position(step // per_epoch, step), stop_at=end, end_step=end_step)
