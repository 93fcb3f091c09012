"""Training loop of the Matryoshka LM: MatryoshkaLoss over every head size, resumable.

The objective is MRL's (Kusupati et al. 2022, eq. 1) applied per token: the sum over nesting sizes
of the next-token cross-entropy, weights 1 as in the paper; a model with ``widths`` (MatFormer)
sums that over its FFN widths too (``train_loss`` in metrics.jsonl is then the sum over widths).
The loop is nanoGPT's train.py cut down to one CPU process: AdamW (weight decay on matrices
only), linear warm-up then cosine decay, gradient clipping. Batches are random windows of the
training id stream drawn from a seeded ``torch.Generator``.

A run directory is an ``lm-run`` artifact (:mod:`mrl.artifacts`): ``config.json`` (model and
training configs, corpus), ``tokenizer.json``, the cached id streams ``tokens_{train,val}.npy``,
``checkpoint-NNNNNNN.safetensors`` (model, AdamW state and the batch generator's state),
``metrics.jsonl`` and, at the end, ``model.safetensors``; ``manifest.json`` holds the sha256 of
each and the step of the last checkpoint, and rewriting it is what commits a checkpoint. Because
everything that decides the next step is checkpointed, a resumed run reaches the same weights as
an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrl.artifacts import MANIFEST, Manifest, lock, read_made_by, write_manifest
from mrl.config import config_from_dict
from mrl.errors import MRLError
from mrl.io import atomic_write_text, load_npy, load_tensors, read_json, read_jsonl, save_npy, save_tensors, write_json
from mrl.lm.corpus import load_corpus
from mrl.lm.model import LMConfig, MatryoshkaLM
from mrl.lm.tokenizer import LMTokenizer
from mrl.loop import Loop, Position
from mrl.losses import MatryoshkaLoss
from mrl.models.widths import parse_width_weights
from mrl.training import load_optimizer_tensors, optimizer_tensors
from mrl.validation import check_float, check_int, check_seed

log = logging.getLogger(__name__)
KIND = "lm-run"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
BASE_FILES = (CONFIG_FILE, "tokenizer.json", "tokens_train.npy", "tokens_val.npy")
FINAL_WEIGHTS = "model.safetensors"
OUTPUTS = ("eval.json", "token_stats.npz", "adaptive.json")  # written by mrl.lm.evaluate


@dataclass
class TrainConfig:
    """Optimisation settings. Defaults train one CPU model in a few minutes."""

    steps: int = 400  # ~0.8M tokens at batch 32 x context 64: a quarter epoch of WordNet
    batch_size: int = 32
    lr: float = 3e-3  # small models tolerate nanoGPT's "baby GPT" rate and learn faster
    min_lr: float = 3e-4  # cosine decays to lr / 10 (Chinchilla's recipe)
    warmup_steps: int = 40
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100
    log_every: int = 20
    eval_batches: int = 8  # validation windows (x batch_size) scored at each checkpoint
    width_weights: list[float] | None = None  # a nested-width model: each width's share of the loss; None: all 1

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "warmup_steps", "checkpoint_every", "log_every", "eval_batches"):
            least = 0 if name == "warmup_steps" else 1
            setattr(self, name, check_int(name, getattr(self, name), min=least, max=10**9))
        self.seed = check_seed("seed", self.seed)
        self.lr = check_float("lr", self.lr, min=0, max=10, min_open=True)
        self.min_lr = check_float("min_lr", self.min_lr, min=0, max=self.lr)
        self.weight_decay = check_float("weight_decay", self.weight_decay, min=0, max=1e3)
        self.grad_clip = check_float("grad_clip", self.grad_clip, min=0, min_open=True)
        self.width_weights = parse_width_weights(self.width_weights)

    def check_for(self, model: LMConfig) -> None:
        """Refuse settings that do not fit the model: width weights need one value per width."""
        if self.width_weights is None:
            return
        if model.widths is None:
            raise MRLError("width-weights apply to a model with nested widths; pass --widths")
        parse_width_weights(self.width_weights, len(model.widths))

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """Build from a dict (e.g. config.json's "train"); unknown keys are errors."""
        return config_from_dict(cls, values, "training")


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``lr``, then cosine decay to ``min_lr`` at ``steps``.

    Example:
        >>> cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr=0.0)
        >>> learning_rate(4, cfg), learning_rate(10, cfg), round(learning_rate(100, cfg), 6)
        (0.5, 1.0, 0.0)
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def sample_batch(ids: torch.Tensor, context: int, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: inputs [B, T] and next-token targets [B, T]."""
    if ids.numel() < context + 2:
        raise MRLError(f"the training stream has {ids.numel()} tokens, fewer than context + 2 = {context + 2}")
    starts = torch.randint(0, ids.numel() - context - 1, (batch_size,), generator=generator)
    windows = torch.stack([ids[s : s + context + 1] for s in starts.tolist()]).long()
    return windows[:, :-1], windows[:, 1:]


def make_optimizer(model: MatryoshkaLM, cfg: TrainConfig) -> torch.optim.AdamW:
    # nanoGPT: decay matrices and embeddings, not biases and LayerNorm gains.
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


def checkpoint_name(step: int) -> str:
    """The checkpoint file of ``step``; names are fixed here, never read from a file."""
    return f"checkpoint-{check_int('step', step, min=1):07d}.safetensors"


def read_lm_run(run_dir: str | os.PathLike, verify: list[str] | None = None) -> Manifest:
    """The verified manifest of an LM run directory (every listed file by default)."""
    return read_made_by(run_dir, KIND, FORMAT_VERSION, "mrl lm train", "LM run directory", "an LM run directory",
                        verify=verify)


def checkpoint_step(manifest: Manifest) -> int:
    """Step of the run's last checkpoint (0 before the first), type-checked."""
    return check_int(f"{MANIFEST}: step", manifest.meta.get("step", 0), min=0)


def record_files(run_dir: Path, add: Sequence[str] = (), drop: Sequence[str] = (), **meta: Any) -> None:
    """Rewrite the manifest: the files it lists (verified first) less ``drop``, plus ``add``; meta updated."""
    manifest = read_lm_run(run_dir)
    kept = [n for n in manifest.files if n not in drop and n not in add]
    write_manifest(run_dir, KIND, kept + list(add), FORMAT_VERSION, meta={**manifest.meta, **meta})


def save_checkpoint(run_dir: Path, model: MatryoshkaLM, opt: torch.optim.AdamW, generator: torch.Generator, step: int) -> None:
    """Model, optimizer and batch-generator state at ``step``, committed by the manifest; the older one is dropped."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(optimizer_tensors(opt, prefix="optim."))
    tensors["rng"] = generator.get_state()
    name = checkpoint_name(step)
    save_tensors(run_dir / name, tensors, metadata={"step": str(step)})
    previous = checkpoint_step(read_lm_run(run_dir, verify=[]))
    old = [checkpoint_name(previous)] if previous and previous != step else []
    record_files(run_dir, add=[name], drop=old + list(OUTPUTS), step=step)
    clean_stale(run_dir)


def load_checkpoint(run_dir: Path, model: MatryoshkaLM, opt: torch.optim.AdamW, generator: torch.Generator) -> int:
    """Restore the last checkpoint (verified against the manifest); returns the step it was taken at."""
    step = checkpoint_step(read_lm_run(run_dir, verify=[]))
    name = checkpoint_name(step)
    read_lm_run(run_dir, verify=[name])
    tensors = load_tensors(run_dir / name)
    try:
        model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
        load_optimizer_tensors(opt, tensors, prefix="optim.")
        generator.set_state(tensors["rng"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise MRLError(f"{run_dir / name} does not fit this run's model ({exc})") from None
    return step


def clean_stale(run_dir: Path) -> None:
    """Remove checkpoints and outputs the manifest does not hold, and temp files of killed writes."""
    listed = read_lm_run(run_dir, verify=[]).files
    for path in run_dir.iterdir():
        unlisted = path.name not in listed and (
            re.fullmatch(r"checkpoint-\d{7}\.safetensors", path.name) or path.name in (*OUTPUTS, FINAL_WEIGHTS)
        )
        if (unlisted or re.fullmatch(r"\..+\.tmp", path.name)) and (path.is_file() or path.is_symlink()):
            path.unlink()


def read_run_config(run_dir: str | os.PathLike) -> dict:
    """config.json of an LM run directory, verified against its manifest; anything else is refused."""
    run_dir = Path(run_dir)
    read_lm_run(run_dir, verify=[CONFIG_FILE])
    config = read_json(run_dir / CONFIG_FILE)
    if not isinstance(config, dict) or not {"corpus", "model", "train"} <= set(config) or not isinstance(config["corpus"], str):
        raise MRLError(f"{run_dir} is not an LM run directory (its config.json has no corpus/model/train sections)")
    return config


def load_model(run_dir: str | os.PathLike) -> MatryoshkaLM:
    """The trained LM of a run directory (final weights, or the last checkpoint's while training)."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    model = MatryoshkaLM(LMConfig.from_dict(config["model"]))
    manifest = read_lm_run(run_dir, verify=[])
    step = checkpoint_step(manifest)
    name = FINAL_WEIGHTS if FINAL_WEIGHTS in manifest.files else checkpoint_name(step) if step else None
    if name is None:
        raise MRLError(f"{run_dir} holds no trained weights yet; run `mrl lm train --out {run_dir} --resume`")
    read_lm_run(run_dir, verify=[name])
    tensors = load_tensors(run_dir / name)
    state = {k.removeprefix("model."): v for k, v in tensors.items() if not k.startswith(("optim.", "rng"))}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise MRLError(f"{run_dir / name} does not fit the model in its config.json ({exc})") from None
    return model.eval()


@torch.no_grad()
def validation_loss(model: MatryoshkaLM, val_ids: torch.Tensor, batch_size: int, n_batches: int) -> list[float]:
    """Mean cross-entropy per size on the first ``n_batches`` x ``batch_size`` validation windows."""
    T = model.config.context
    n_windows = min(n_batches * batch_size, (val_ids.numel() - 1) // T)
    if n_windows < 1:
        raise MRLError(f"the validation stream has {val_ids.numel()} tokens, fewer than context + 1 = {T + 1}")
    windows = torch.stack([val_ids[i * T : i * T + T + 1] for i in range(n_windows)]).long()
    loss = MatryoshkaLoss(nesting=model.nesting)
    was_training = model.training
    model.eval()
    total = torch.zeros(len(model.nesting))
    for start in range(0, n_windows, batch_size):
        chunk = windows[start : start + batch_size]
        logits = model(chunk[:, :-1])
        total += loss.per_size(logits.flatten(1, 2), chunk[:, 1:].flatten()) * len(chunk)
    model.train(was_training)
    return (total / n_windows).tolist()


def prepare_run(
    run_dir: str | os.PathLike,
    corpus: str,
    model_config: LMConfig,
    train_config: TrainConfig,
    tokenizer_path: str | os.PathLike | None = None,
    tokens_from: str | os.PathLike | None = None,
) -> None:
    """Write config.json, tokenizer.json and the cached id streams of a new run directory.

    Args:
        run_dir: the run directory (created).
        corpus: corpus name or path (see :func:`~mrl.lm.corpus.load_corpus`).
        model_config, train_config: the configs saved in config.json.
        tokenizer_path: a tokenizer JSON to reuse; by default one is trained on the corpus.
        tokens_from: another run directory of the same corpus whose tokenizer and id streams are
            copied (so models compared with each other see the same tokens, tokenised once).
    """
    run_dir = Path(run_dir)
    train_config.check_for(model_config)
    names = ("tokens_train.npy", "tokens_val.npy")
    if tokens_from is not None:
        source = Path(tokens_from)
        if read_run_config(source)["corpus"] != corpus:
            raise MRLError(f"tokens_from={str(source)!r} was made from another corpus than {corpus!r}")
        read_lm_run(source, verify=list(BASE_FILES))
        tokenizer = LMTokenizer.load(source / "tokenizer.json")
        streams = [load_npy(source / name) for name in names]
    else:
        data = load_corpus(corpus)
        if tokenizer_path is not None:
            tokenizer = LMTokenizer.load(tokenizer_path)
        else:
            tokenizer = LMTokenizer.train(data.train, vocab_size=model_config.vocab_size)
        dtype = np.uint16 if model_config.vocab_size <= 65536 else np.int32
        streams = [np.asarray(tokenizer.encode_documents(docs), dtype=dtype) for docs in (data.train, data.val)]
    if tokenizer.vocab_size > model_config.vocab_size:
        raise MRLError(f"the tokenizer has {tokenizer.vocab_size} tokens, more than vocab_size={model_config.vocab_size}")
    # Checked before anything is written, so a context too long for the corpus leaves no half-made run.
    for name, stream, least in zip(names, streams, (model_config.context + 2, model_config.context + 1)):
        if len(stream) < least:
            raise MRLError(f"{name} would hold {len(stream)} tokens, fewer than context + {least - model_config.context} = "
                           f"{least}; lower --context or use a larger corpus")
    for name, stream in zip(names, streams):
        save_npy(run_dir / name, stream)
    tokenizer.save(run_dir / "tokenizer.json")
    write_json(run_dir / CONFIG_FILE, {"corpus": corpus, "model": model_config.to_dict(), "train": asdict(train_config)})
    write_manifest(run_dir, KIND, BASE_FILES, FORMAT_VERSION, meta={"step": 0})


def train(run_dir: str | os.PathLike, resume: bool = False, stop_after: int | None = None, progress: bool = True) -> MatryoshkaLM:
    """Train (or resume) the LM of a prepared run directory.

    Args:
        run_dir: made by :func:`prepare_run`.
        resume: continue from the last checkpoint if there is one.
        stop_after: stop once this many steps are done, leaving a checkpoint (as an interruption
            would); the run can then be resumed.
        progress: show a tqdm bar.

    Returns:
        The model (in eval mode).
    """
    run_dir = Path(run_dir)
    read_lm_run(run_dir, verify=[])  # a missing or foreign folder is refused before the lock creates anything
    with lock(run_dir):
        return _train(run_dir, resume, stop_after, progress)


def _train(run_dir: Path, resume: bool, stop_after: int | None, progress: bool) -> MatryoshkaLM:
    config = read_run_config(run_dir)
    model_config = LMConfig.from_dict(config["model"])
    cfg = TrainConfig.from_dict(config["train"])
    cfg.check_for(model_config)
    torch.manual_seed(cfg.seed)
    model = MatryoshkaLM(model_config)
    opt = make_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    step = 0
    if resume and checkpoint_step(read_lm_run(run_dir, verify=[])):
        step = load_checkpoint(run_dir, model, opt, generator)
        log.info("resumed %s at step %d", run_dir, step)
        # Lines logged after the checkpoint are redone by this attempt: keep one copy of each step.
        kept = [r for r in read_jsonl(run_dir / "metrics.jsonl") if isinstance(r, dict) and r.get("step", 0) <= step]
        atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in kept))
    else:
        if (run_dir / "metrics.jsonl").exists():
            (run_dir / "metrics.jsonl").unlink()  # a fresh start forgets the metrics of an earlier one
        previous = checkpoint_step(read_lm_run(run_dir, verify=[]))
        record_files(run_dir, drop=[checkpoint_name(previous)] if previous else [], step=0)
        record_files(run_dir, drop=[FINAL_WEIGHTS, *OUTPUTS])
    clean_stale(run_dir)
    read_lm_run(run_dir, verify=list(BASE_FILES))
    train_ids = torch.from_numpy(load_npy(run_dir / "tokens_train.npy").astype(np.int64))
    val_ids = torch.from_numpy(load_npy(run_dir / "tokens_val.npy").astype(np.int64))
    loss_fn = MatryoshkaLoss(nesting=model.nesting)
    last = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    started = time.perf_counter()

    def batches(epoch: int, first: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:  # random windows; the checkpointed generator makes them resume exactly
            yield sample_batch(train_ids, model_config.context, cfg.batch_size, generator)

    def backward(batch: tuple[torch.Tensor, torch.Tensor], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        widths = model_config.widths or [None]
        per_size = sum(
            c * loss_fn.per_size(model.per_size_logits(model.hidden(x, w).flatten(0, 1)), y.flatten())
            for c, w in zip(cfg.width_weights or [1.0] * len(widths), widths)
        )
        loss = (loss_fn.weights * per_size).sum()
        if torch.isfinite(loss):
            loss.backward()
        return loss.detach(), per_size.detach()

    def step_optimizer() -> None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()

    def end_step(position: Position, per_size: torch.Tensor) -> dict | None:
        checkpoint_now = position.step % cfg.checkpoint_every == 0 or position.step == last
        if not (checkpoint_now or position.step % cfg.log_every == 0):
            return None
        record = {"step": position.step, "lr": learning_rate(position.step - 1, cfg), "nesting": model.nesting,
                  "train_loss": per_size.tolist(), "elapsed_s": time.perf_counter() - started}
        if checkpoint_now:
            record["val_loss"] = validation_loss(model, val_ids, cfg.batch_size, cfg.eval_batches)
        return record

    model.train()
    loop = Loop(
        opt, lambda i: learning_rate(i, cfg), backward, model.nesting, step_optimizer=step_optimizer,
        desc=f"lm {model_config.head}", progress=progress, metrics=run_dir / "metrics.jsonl",
        checkpoint=lambda position: save_checkpoint(run_dir, model, opt, generator, position.step),
        checkpoint_every=cfg.checkpoint_every,
    )
    step = loop.run(batches, 1, cfg.steps, Position(0, step), stop_at=stop_after, end_step=end_step).step
    if step >= cfg.steps:
        save_tensors(run_dir / FINAL_WEIGHTS, model.state_dict(), metadata={"step": str(step)})
        record_files(run_dir, add=[FINAL_WEIGHTS])
    return model.eval()
