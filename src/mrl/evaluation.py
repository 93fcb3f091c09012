"""Per-size evaluation of a run: linear top-1 / top-5 and 1-NN accuracy on the test set.

The paper's Table 1 (linear classification) uses each size's own head on z[:m]; Table 2 (1-NN)
searches the train embeddings with the test embeddings at every prefix size. As in the paper's
retrieval code, 1-NN uses cosine similarity: each prefix is L2-normalised after truncation, and
exact inner-product search is done by FAISS (IndexFlatIP).

Everything streams, so a run on ImageNet evaluates without holding its training set: logits are
reduced to top-k hit counts batch by batch, and the train embeddings are computed and searched in
blocks, keeping each query's best match so far (no N x N matrix and no [N_train, d] array).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import faiss
import numpy as np
import torch
from tqdm.auto import tqdm

from mrl.config import TrainConfig
from mrl.data import Dataset, StreamingDataset, load_dataset
from mrl.data.batches import eval_batches
from mrl.errors import MRLError
from mrl.artifacts import lock
from mrl.models import MatryoshkaClassifier
from mrl.models.widths import WidthSpec
from mrl.nesting import truncate
from mrl.runs import load_config, load_weights, read_run, save_eval
from mrl.training import build_model, device_from_env

KNN_BLOCK_ROWS = 65536  # train embeddings searched at a time: 512 MiB at d = 2048


def per_size(result: dict, key: str) -> dict[int, float]:
    """One series of an eval.json (``top1``, ``top5``, ``knn1``...) keyed by int size.

    Example:
        >>> per_size({"top1": {"8": 0.5, "16": 0.75}}, "top1")
        {8: 0.5, 16: 0.75}
    """
    return {int(m): float(v) for m, v in result[key].items()}


def topk_hits(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Whether each row's label is among its k largest logits; logits [..., N, C] -> bool [..., N]."""
    k = min(k, logits.shape[-1])
    top = logits.topk(k, dim=-1).indices
    return (top == labels.unsqueeze(-1)).any(-1)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Share of rows whose label is among the k largest logits; logits [..., N, C] -> [...]."""
    return topk_hits(logits, labels, k).float().mean(-1)


def knn1_accuracy(
    database: np.ndarray, db_labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray,
    nesting: Sequence[int], progress: bool = False,
) -> dict[int, float]:
    """1-NN accuracy at every prefix size m (cosine similarity on the normalised prefixes)."""
    blocks = (
        (database[i : i + KNN_BLOCK_ROWS], db_labels[i : i + KNN_BLOCK_ROWS])
        for i in range(0, len(database), KNN_BLOCK_ROWS)
    )
    return knn1_accuracy_blocks(blocks, queries, query_labels, nesting, progress=progress)


def knn1_accuracy_blocks(
    blocks: Iterable[tuple[np.ndarray, np.ndarray]], queries: np.ndarray, query_labels: np.ndarray,
    nesting: Sequence[int], progress: bool = False,
) -> dict[int, float]:
    """1-NN accuracy at every prefix size m over a database given as blocks (embeddings [n, d], labels [n]).

    Each block is searched exactly (FAISS IndexFlatIP on the normalised prefixes) and every query
    keeps its best match so far; on equal similarity the earlier database row wins, as in one search.

    Example:
        >>> db = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=np.float32)
        >>> q = np.array([[0.1, 1.0]], dtype=np.float32)
        >>> knn1_accuracy_blocks([(db[:2], np.array([0, 1])), (db[2:], np.array([2]))], q, np.array([1]), [1, 2])
        {1: 0.0, 2: 1.0}
    """
    best_sim = {m: np.full(len(queries), -np.inf, dtype=np.float32) for m in nesting}
    best_label = {m: np.full(len(queries), -1, dtype=np.int64) for m in nesting}
    for db, labels in tqdm(blocks, desc="1-NN", disable=not progress, leave=False):
        if len(db) == 0:
            continue
        for m in nesting:
            index = faiss.IndexFlatIP(m)
            index.add(np.ascontiguousarray(truncate(db, m, normalize=True), dtype=np.float32))
            sims, ids = index.search(np.ascontiguousarray(truncate(queries, m, normalize=True), dtype=np.float32), 1)
            better = sims[:, 0] > best_sim[m]
            best_sim[m][better] = sims[better, 0]
            best_label[m][better] = np.asarray(labels)[ids[better, 0]]
    return {m: float((best_label[m] == query_labels).mean()) for m in nesting}


@torch.no_grad()
def embed(model: MatryoshkaClassifier, x: torch.Tensor, device: torch.device, batch_size: int = 1024, progress: bool = False) -> np.ndarray:
    """Representations z [N, d] as float32 numpy."""
    model.eval()
    chunks = [
        model.embed(x[i : i + batch_size].to(device)).float().cpu()
        for i in tqdm(range(0, len(x), batch_size), desc="embed", disable=not progress, leave=False)
    ]
    return torch.cat(chunks).numpy()


@torch.no_grad()
def embed_batches(
    model: MatryoshkaClassifier, data: Dataset | StreamingDataset, split: str, device: torch.device,
    workers: int = 0, progress: bool = False, width: WidthSpec = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Representations of one split in order, batch by batch: (z [B, d] float32, labels [B] int64).

    ``width`` picks a nested-width submodel (:meth:`MatryoshkaClassifier.embed`).
    """
    model.eval()
    part = data.split(split)
    batches = eval_batches(part, device, workers=workers)
    for x, y in tqdm(batches, desc=f"embed {split}", disable=not progress, leave=False):
        yield model.embed(x, width).float().cpu().numpy(), y.numpy().astype(np.int64)


def _blocks(batches: Iterable[tuple[np.ndarray, np.ndarray]], rows: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Regroup (z, y) batches into blocks of about ``rows`` rows."""
    zs, ys, held = [], [], 0
    for z, y in batches:
        zs.append(z)
        ys.append(y)
        held += len(y)
        if held >= rows:
            yield np.concatenate(zs), np.concatenate(ys)
            zs, ys, held = [], [], 0
    if zs:
        yield np.concatenate(zs), np.concatenate(ys)


def load_run(
    run_dir: str | Path, data: Dataset | StreamingDataset | None = None
) -> tuple[TrainConfig, MatryoshkaClassifier, Dataset | StreamingDataset, torch.device]:
    """Config, trained model (eval mode) and data set of a run."""
    config = load_config(run_dir)
    data = data if data is not None else load_dataset(
        config.data, config.data_dir, config.max_train, image_size=config.image_size
    )
    device = device_from_env()
    model = build_model(config, data)
    load_weights(model, run_dir)
    return config, model.to(device).eval(), data, device


def evaluate_run(
    run_dir: str | Path, save_logits: bool = False, progress: bool = True, data: Dataset | None = None
) -> dict:
    """Compute and write RUN_DIR/eval.json: top-1, top-5 and 1-NN accuracy per nesting size.

    A nested-width run also gets ``grid``, the (width x size) table of
    :func:`mrl.width_grid.evaluate_grid` (with ``save_logits``: logits_widths_{val,test}.npy,
    float32 [W, G, N, C], too).

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
    hits, logits = {}, {}
    with torch.no_grad():
        for split in ("val", "test"):
            counts, kept = torch.zeros(2, len(nesting), dtype=torch.long), []
            for x, y in eval_batches(data.split(split), device, workers=config.workers):
                batch = model(x).float().cpu()
                if not torch.isfinite(batch).all():
                    raise MRLError(f"the model in {run_dir} produces NaN or infinite logits")
                for row, k in enumerate((1, 5)):
                    counts[row] += topk_hits(batch, y, k).sum(-1)
                if save_logits:
                    kept.append(batch)
            hits[split] = counts.double() / len(data.split(split))
            if save_logits:
                logits[split] = torch.cat(kept, dim=1)
    z_test, y_test = (np.concatenate(parts) for parts in zip(*embed_batches(model, data, "test", device, config.workers)))
    train_blocks = _blocks(embed_batches(model, data, "train", device, config.workers, progress), KNN_BLOCK_ROWS)
    knn = knn1_accuracy_blocks(train_blocks, z_test, y_test, nesting)
    result = {
        "top1": {str(m): float(v) for m, v in zip(nesting, hits["test"][0])},
        "top5": {str(m): float(v) for m, v in zip(nesting, hits["test"][1])},
        "knn1": {str(m): knn[m] for m in nesting},
        "val_top1": {str(m): float(v) for m, v in zip(nesting, hits["val"][0])},
        "mode": config.mode,
        "nesting": nesting,
        "n_test": len(data.test),
    }
    arrays = {}
    if config.widths is not None:
        from mrl.width_grid import evaluate_grid  # imports this module

        result["grid"], width_logits = evaluate_grid(model, data, config.widths, device, config.workers, full_knn1=knn)
        if save_logits:
            arrays.update({f"logits_widths_{split}.npy": value for split, value in width_logits.items()})
    if save_logits:
        for split in ("val", "test"):
            arrays[f"logits_{split}.npy"] = logits[split].numpy().astype(np.float32)
            arrays[f"labels_{split}.npy"] = data.split(split).y.numpy().astype(np.int64)
    save_eval(run_dir, result, arrays)
    return result


def embed_run(run_dir: str | Path, split: str, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings X [N, d] float32 and labels y [N] int64 of one split."""
    config, model, data, device = load_run(run_dir)
    z, y = zip(*embed_batches(model, data, split, device, config.workers, progress))
    return np.concatenate(z), np.concatenate(y)
