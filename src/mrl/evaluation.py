"""Per-size evaluation of a run: linear top-1 / top-5 and 1-NN accuracy on the test set.

The paper's Table 1 (linear classification) uses each size's own head on z[:m]; Table 2 (1-NN)
searches the train embeddings with the test embeddings at every prefix size. As in the paper's
retrieval code, 1-NN uses cosine similarity: each prefix is L2-normalised after truncation, and
exact inner-product search is done by FAISS (IndexFlatIP).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from mrl.config import TrainConfig
from mrl.data import Dataset, load_dataset
from mrl.errors import MRLError
from mrl.artifacts import lock
from mrl.models import MatryoshkaClassifier
from mrl.nesting import truncate
from mrl.runs import load_config, load_weights, read_run, save_eval
from mrl.training import build_model, device_from_env, predict_logits


def per_size(result: dict, key: str) -> dict[int, float]:
    """One series of an eval.json (``top1``, ``top5``, ``knn1``...) keyed by int size.

    Example:
        >>> per_size({"top1": {"8": 0.5, "16": 0.75}}, "top1")
        {8: 0.5, 16: 0.75}
    """
    return {int(m): float(v) for m, v in result[key].items()}


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Share of rows whose label is among the k largest logits; logits [..., N, C] -> [...]."""
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    return (top == labels.unsqueeze(-1)).any(-1).float().mean(-1)


def knn1_accuracy(
    database: np.ndarray, db_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray,
    nesting: Sequence[int], progress: bool = False,
) -> dict[int, float]:
    """1-NN accuracy at every prefix size m (cosine similarity on the normalised prefixes)."""
    out = {}
    for m in tqdm(nesting, desc="1-NN", disable=not progress, leave=False):
        db = np.ascontiguousarray(truncate(database, m, normalize=True), dtype=np.float32)
        q = np.ascontiguousarray(truncate(queries, m, normalize=True), dtype=np.float32)
        index = faiss.IndexFlatIP(m)
        index.add(db)
        _, ids = index.search(q, 1)
        out[m] = float((db_labels[ids[:, 0]] == query_labels).mean())
    return out


@torch.no_grad()
def embed(model: MatryoshkaClassifier, x: torch.Tensor, device: torch.device, batch_size: int = 1024, progress: bool = False) -> np.ndarray:
    """Representations z [N, d] as float32 numpy."""
    model.eval()
    chunks = [
        model.embed(x[i : i + batch_size].to(device)).float().cpu()
        for i in tqdm(range(0, len(x), batch_size), desc="embed", disable=not progress, leave=False)
    ]
    return torch.cat(chunks).numpy()


def load_run(run_dir: str | Path, data: Dataset | None = None) -> tuple[TrainConfig, MatryoshkaClassifier, Dataset, torch.device]:
    """Config, trained model (eval mode) and data set of a run."""
    config = load_config(run_dir)
    data = data if data is not None else load_dataset(config.data, config.data_dir, config.max_train)
    device = device_from_env()
    model = build_model(config, data)
    load_weights(model, run_dir)
    return config, model.to(device).eval(), data, device


def evaluate_run(
    run_dir: str | Path, save_logits: bool = False, progress: bool = True, data: Dataset | None = None
) -> dict:
    """Compute and write RUN_DIR/eval.json: top-1, top-5 and 1-NN accuracy per nesting size.

    With ``save_logits``, also writes logits_{val,test}.npy (float32 [G, N, C]) and
    labels_{val,test}.npy (int64 [N]) for adaptive classification.
    """
    run_dir = Path(run_dir)
    read_run(run_dir, verify=[])  # a missing or foreign folder is refused before the lock creates anything
    with lock(run_dir):
        return _evaluate_run(run_dir, save_logits, progress, data)


def _evaluate_run(run_dir: Path, save_logits: bool, progress: bool, data: Dataset | None) -> dict:
    config, model, data, device = load_run(run_dir, data)
    nesting = config.nesting
    logits = {s: predict_logits(model, data.split(s).x, device) for s in ("val", "test")}
    if not torch.isfinite(logits["test"]).all():
        raise MRLError(f"the model in {run_dir} produces NaN or infinite logits")
    top1 = topk_accuracy(logits["test"], data.test.y, 1)
    top5 = topk_accuracy(logits["test"], data.test.y, 5)
    z_train = embed(model, data.train.x, device, progress=progress)
    z_test = embed(model, data.test.x, device, progress=progress)
    knn = knn1_accuracy(z_train, data.train.y.numpy(), z_test, data.test.y.numpy(), nesting, progress=progress)
    result = {
        "top1": {str(m): float(v) for m, v in zip(nesting, top1)},
        "top5": {str(m): float(v) for m, v in zip(nesting, top5)},
        "knn1": {str(m): knn[m] for m in nesting},
        "val_top1": {str(m): float(v) for m, v in zip(nesting, topk_accuracy(logits["val"], data.val.y, 1))},
        "mode": config.mode,
        "nesting": nesting,
        "n_test": len(data.test),
    }
    arrays = {}
    if save_logits:
        for split in ("val", "test"):
            arrays[f"logits_{split}.npy"] = logits[split].numpy().astype(np.float32)
            arrays[f"labels_{split}.npy"] = data.split(split).y.numpy().astype(np.int64)
    save_eval(run_dir, result, arrays)
    return result


def embed_run(run_dir: str | Path, split: str, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings X [N, d] float32 and labels y [N] int64 of one split."""
    _, model, data, device = load_run(run_dir)
    part = data.split(split)
    return embed(model, part.x, device, progress=progress), part.y.numpy().astype(np.int64)
