"""MRL retro-fitting: Matryoshka heads trained on a frozen FF-d model (the paper's cheap variant).

MRL paper, Appendix (MRL on a pretrained FF model, "fine-tuning only the last layer"): start from
a trained FF-d model, freeze everything below the representation layer, and train that layer
together with new Matryoshka heads (one W_m per m, as MRL) with the Matryoshka loss. With
``last_layer=False`` only the heads are trained; z is then the FF-d representation itself, so
1-NN equals FF-d's truncated prefixes and only the linear heads change.

The frozen trunk runs in eval mode (its BatchNorm statistics stay those of the FF-d model); the
recipe is otherwise that of :mod:`mrl.training` (AdamW, warm-up + cosine, seeded shuffling and
augmentation). A retro-fit is cheap (a fraction of one run), so it is stored whole: the directory
(config.json, model.safetensors, eval.json) appears atomically once it is complete.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from mrl.baselines.parts import epoch_batches, eval_record, split_backbone, steps_per_epoch
from mrl.config import TrainConfig
from mrl.data import Dataset
from mrl.errors import MRLError
from mrl.artifacts import kind_of, read_manifest, write_manifest
from mrl.evaluation import embed, knn1_accuracy, load_run
from mrl.heads import MatryoshkaLinear
from mrl.io import atomic_directory, read_json, save_tensors, write_json
from mrl.loop import Loop
from mrl.losses import MatryoshkaLoss
from mrl.models import MatryoshkaClassifier
from mrl.nesting import parse_nesting
from mrl.runs import CONFIG_FILE, EVAL_FILE, check_eval, read_state
from mrl.training import lr_at, predict_logits

METHOD = "retrofit"
MODEL_FILE = "model.safetensors"


KIND = "experiment"


def is_done(out: str | Path) -> bool:
    """A retro-fit directory exists only once complete (it is written atomically, manifest last)."""
    return kind_of(out) == KIND


def retrofit(
    base_run: str | Path, out: str | Path, nesting: Sequence[int] | str | None = None, epochs: int | None = None,
    lr: float | None = None, last_layer: bool = True, seed: int | None = None, data: Dataset | None = None,
    progress: bool = True,
) -> dict:
    """Retro-fit MRL heads onto the FF-d run ``base_run``; write ``out`` and return its eval.json.

    Args:
        base_run: a finished FF run directory (mode ff, representation size d).
        out: directory to create (must not exist).
        nesting: sizes of the new heads (default 8, 16, ..., d).
        epochs, lr, seed: default to the base run's.
        last_layer: also fine-tune the representation layer (default); False trains heads only.
    """
    base_run, out = Path(base_run), Path(out)
    base_config, base, data, device = load_run(base_run, data)
    if base_config.mode != "ff":
        raise MRLError(f"retro-fit needs an FF run as its base, got mode {base_config.mode!r} in {base_run}")
    d = base_config.rep_dim
    config = TrainConfig(
        data=base_config.data, data_dir=base_config.data_dir, mode="mrl", arch=base_config.arch, rep_dim=d,
        nesting=parse_nesting(nesting, d),
        epochs=epochs or base_config.epochs, batch_size=base_config.batch_size, lr=lr or base_config.lr,
        weight_decay=base_config.weight_decay, warmup_epochs=base_config.warmup_epochs, augment=base_config.augment,
        max_train=base_config.max_train, seed=base_config.seed if seed is None else seed,
        extra={"method": METHOD, "last_layer": last_layer, "base_model_sha256": read_state(base_run).model_sha256},
    )
    model = MatryoshkaClassifier(base.backbone, data.num_classes, config.nesting, tied=False)
    torch.manual_seed(config.seed)
    model.head = MatryoshkaLinear(d, data.num_classes, config.nesting).to(device)
    parts = split_backbone(model.backbone)
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    trained = list(model.head.parameters())
    if last_layer:
        for p in parts.last.parameters():
            p.requires_grad_(True)
        trained += list(parts.last.parameters())
    optimizer = torch.optim.AdamW(trained, lr=config.lr, weight_decay=config.weight_decay)
    criterion = MatryoshkaLoss(nesting=config.nesting).to(device)
    steps = steps_per_epoch(config, data)
    total, warmup = steps * config.epochs, int(config.warmup_epochs * steps)

    def backward(batch: tuple[torch.Tensor, torch.Tensor], step: int) -> tuple[torch.Tensor, torch.Tensor]:
        model.eval()  # the frozen trunk keeps the FF-d model's BatchNorm statistics
        parts.last.train(last_layer)
        x, y = batch
        with torch.no_grad():
            h = parts.trunk(x.to(device))
        loss = criterion(model.head(parts.finish(parts.last(h))), y.to(device))
        if torch.isfinite(loss):
            loss.backward()
        return loss.detach(), loss.detach().reshape(1)

    started = time.time()
    Loop(optimizer, lambda step: lr_at(step, total, warmup, config.lr), backward, ["loss"], what="retro-fit",
         desc="retro-fit epoch", progress=progress).run(
        lambda epoch, first: epoch_batches(config, data, epoch), config.epochs, steps)
    seconds = time.time() - started
    result = _evaluate(model, config, data, device)
    result["train_seconds"] = seconds
    with atomic_directory(out) as tmp:
        config.save(tmp / CONFIG_FILE)
        save_tensors(tmp / MODEL_FILE, {k: v.contiguous() for k, v in model.state_dict().items()})
        write_json(tmp / EVAL_FILE, result)
        write_manifest(tmp, KIND, [CONFIG_FILE, MODEL_FILE, EVAL_FILE], meta={"method": METHOD})
    return result


def _evaluate(model: MatryoshkaClassifier, config: TrainConfig, data: Dataset, device: torch.device) -> dict:
    model.eval()
    logits = predict_logits(model, data.test.x, device)
    z_train, z_test = embed(model, data.train.x, device), embed(model, data.test.x, device)
    knn = knn1_accuracy(z_train, data.train.y.numpy(), z_test, data.test.y.numpy(), config.nesting)
    return eval_record(config.nesting, logits, data.test.y, knn, METHOD)


def load_result(out: str | Path) -> tuple[TrainConfig, dict]:
    """Verified config and eval.json of a finished retro-fit directory."""
    manifest = read_manifest(out, KIND)
    if manifest.meta.get("method") != METHOD:
        raise MRLError(f"{out} holds no finished retro-fit (its manifest names method {manifest.meta.get('method')!r})")
    return TrainConfig.load(Path(out) / CONFIG_FILE), check_eval(read_json(Path(out) / EVAL_FILE), Path(out) / EVAL_FILE)


__all__ = ["METHOD", "MODEL_FILE", "is_done", "load_result", "retrofit"]
