"""Training loop of the Matryoshka LM: MatryoshkaLoss over every head size, resumable.

The objective is MRL's (Kusupati et al. 2022, eq. 1) applied per token: the sum over nesting sizes
of the next-token cross-entropy, weights 1 as in the paper; a model with ``widths`` (MatFormer)
sums that over its FFN widths too (``train_loss`` in metrics.jsonl is then the sum over widths).
The loop is nanoGPT's train.py cut down to one CPU process: AdamW (weight decay on matrices
only), linear warm-up then cosine decay, gradient clipping. Batches are random windows of the
training id stream drawn from a seeded ``torch.Generator``.

A run directory holds ``config.json`` (model and training configs, corpus), ``tokenizer.json``,
the cached id streams ``tokens_{train,val}.npy``, ``checkpoint.safetensors`` (model, AdamW state and
the batch generator's state; the step in its metadata) with ``state.json`` beside it,
``metrics.jsonl`` and, at the end, ``model.safetensors``. Because everything that decides the next
step is checkpointed, a resumed run reaches the same weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mrl.config import config_from_dict
from mrl.errors import MRLError
from mrl.io import append_jsonl, load_npy, load_tensors, read_json, save_npy, save_tensors, write_json
from mrl.lm.corpus import load_corpus
from mrl.lm.model import LMConfig, MatryoshkaLM
from mrl.lm.tokenizer import LMTokenizer
from mrl.losses import MatryoshkaLoss
from mrl.training import load_optimizer_tensors, optimizer_tensors

log = logging.getLogger(__name__)


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

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "warmup_steps", "checkpoint_every", "log_every", "eval_batches"):
            value = getattr(self, name)
            least = 0 if name == "warmup_steps" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise MRLError(f"{name} must be an integer >= {least}, got {value!r}")
        if not self.lr > 0 or not 0 <= self.min_lr <= self.lr:
            raise MRLError(f"need lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")

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


def save_checkpoint(run_dir: Path, model: MatryoshkaLM, opt: torch.optim.AdamW, generator: torch.Generator, step: int) -> None:
    """Model, optimizer and batch-generator state at ``step`` (one safetensors file, atomic)."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(optimizer_tensors(opt, prefix="optim."))
    tensors["rng"] = generator.get_state()
    save_tensors(run_dir / "checkpoint.safetensors", tensors, metadata={"step": str(step)})
    write_json(run_dir / "state.json", {"step": step, "checkpoint": "checkpoint.safetensors"})


def load_checkpoint(run_dir: Path, model: MatryoshkaLM, opt: torch.optim.AdamW, generator: torch.Generator) -> int:
    """Restore a checkpoint; returns the step it was taken at."""
    tensors = load_tensors(run_dir / "checkpoint.safetensors")
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    load_optimizer_tensors(opt, tensors, prefix="optim.")
    generator.set_state(tensors["rng"])
    return int(read_json(run_dir / "state.json")["step"])


def read_run_config(run_dir: str | os.PathLike) -> dict:
    """config.json of an LM run directory; anything else is refused with a clear error."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MRLError(f"LM run directory {run_dir} does not exist")
    if not (run_dir / "config.json").is_file():
        raise MRLError(f"{run_dir} is not an LM run directory (no config.json); create one with `mrl lm train`")
    config = read_json(run_dir / "config.json")
    if not isinstance(config, dict) or not {"corpus", "model", "train"} <= set(config):
        raise MRLError(f"{run_dir} is not an LM run directory (its config.json has no corpus/model/train sections)")
    return config


def load_model(run_dir: str | os.PathLike, weights: str = "model.safetensors") -> MatryoshkaLM:
    """The trained LM of a run directory (final weights, or the checkpoint's while training)."""
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    model = MatryoshkaLM(LMConfig.from_dict(config["model"]))
    path = run_dir / weights
    if not path.exists() and (run_dir / "checkpoint.safetensors").exists():
        path = run_dir / "checkpoint.safetensors"
    tensors = load_tensors(path)
    state = {k.removeprefix("model."): v for k, v in tensors.items() if not k.startswith(("optim.", "rng"))}
    model.load_state_dict(state)
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
    names = ("tokens_train.npy", "tokens_val.npy")
    if tokens_from is not None:
        source = Path(tokens_from)
        if read_run_config(source)["corpus"] != corpus:
            raise MRLError(f"tokens_from={str(source)!r} was made from another corpus than {corpus!r}")
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
    for name, stream in zip(names, streams):
        save_npy(run_dir / name, stream)
    tokenizer.save(run_dir / "tokenizer.json")
    write_json(run_dir / "config.json", {"corpus": corpus, "model": model_config.to_dict(), "train": asdict(train_config)})


def train(run_dir: str | os.PathLike, resume: bool = False, stop_after: int | None = None, progress: bool = True) -> MatryoshkaLM:
    """Train (or resume) the LM of a prepared run directory.

    Args:
        run_dir: made by :func:`prepare_run`.
        resume: continue from ``checkpoint.safetensors`` if there is one.
        stop_after: stop once this many steps are done, leaving a checkpoint (as an interruption
            would); the run can then be resumed.
        progress: show a tqdm bar.

    Returns:
        The model (in eval mode).
    """
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    model_config = LMConfig.from_dict(config["model"])
    cfg = TrainConfig.from_dict(config["train"])
    torch.manual_seed(cfg.seed)
    model = MatryoshkaLM(model_config)
    opt = make_optimizer(model, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    step = 0
    if resume and (run_dir / "checkpoint.safetensors").exists():
        step = load_checkpoint(run_dir, model, opt, generator)
        log.info("resumed %s at step %d", run_dir, step)
    elif (run_dir / "metrics.jsonl").exists():
        (run_dir / "metrics.jsonl").unlink()  # a fresh start forgets the metrics of an earlier one
    train_ids = torch.from_numpy(load_npy(run_dir / "tokens_train.npy").astype(np.int64))
    val_ids = torch.from_numpy(load_npy(run_dir / "tokens_val.npy").astype(np.int64))
    loss_fn = MatryoshkaLoss(nesting=model.nesting)
    last = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    model.train()
    started = time.perf_counter()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"lm {model_config.head}", disable=not progress)
    while step < last:
        lr = learning_rate(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = sample_batch(train_ids, model_config.context, cfg.batch_size, generator)
        per_size = sum(
            loss_fn.per_size(model.per_size_logits(model.hidden(x, w).flatten(0, 1)), y.flatten())
            for w in model_config.widths or [None]
        )
        loss = (loss_fn.weights * per_size).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{per_size[-1].item():.3f}")
        log_now = step % cfg.log_every == 0 or step == last
        checkpoint_now = step % cfg.checkpoint_every == 0 or step == last
        if log_now or checkpoint_now:
            record = {"step": step, "lr": lr, "nesting": model.nesting, "train_loss": per_size.tolist(),
                      "elapsed_s": time.perf_counter() - started}
            if checkpoint_now:
                record["val_loss"] = validation_loss(model, val_ids, cfg.batch_size, cfg.eval_batches)
                save_checkpoint(run_dir, model, opt, generator, step)
            append_jsonl(run_dir / "metrics.jsonl", record)
    bar.close()
    if step >= cfg.steps:
        save_tensors(run_dir / "model.safetensors", model.state_dict(), metadata={"step": str(step)})
    return model.eval()
