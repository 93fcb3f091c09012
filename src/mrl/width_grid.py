"""The (width x dim) grid of a nested-width run: top-1, 1-NN and FLOPs per example at every pair.

A run trained with ``widths`` (:mod:`mrl.models.widths`, MatFormer) holds one model per width w,
and each has the Matryoshka sizes m of the MRL paper (Kusupati et al., NeurIPS 2022, Tables 1-2):
linear top-1 uses the head of size m on z_w[:m], 1-NN searches the train embeddings z_w[:m] with
the test ones (cosine, as :func:`mrl.evaluation.knn1_accuracy_blocks`), both computed as
:func:`mrl.evaluation.evaluate_run` does for the full model.

FLOPs per example count the multiply-adds of the linear layers that answer at (w, m): the trunk at
width w up to z[:m] (:meth:`~mrl.models.widths.NestedWidthMLP.flops`: with switchable BatchNorm
only the representation layer's first m rows run) plus the head m x C (norms, activations, and for
1-NN the search itself, not counted). Grids are dicts keyed by width (as in the config,
e.g. ``"0.25"``) then by size (``"8"``), like eval.json's per-size series.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mrl.data import Dataset
from mrl.data.batches import eval_batches
from mrl.evaluation import KNN_BLOCK_ROWS, _blocks, embed_batches, knn1_accuracy_blocks, topk_hits
from mrl.models import MatryoshkaClassifier


def grid_parts(model: MatryoshkaClassifier, widths: Sequence[float]) -> list[list[dict[str, int]]]:
    """Multiply-adds per example of each (width, size) pair, split into shareable parts [W][G].

    The trunk's parts are :meth:`~mrl.models.widths.NestedWidthMLP.flops_parts`; the head adds
    ``"width w: head m"`` (m x C) for separate heads (MRL), or ``"width w: head"`` of m x C for tied
    ones (MRL-E: the logits of W[:, :m] are a partial sum of those of any larger m).

    Example:
        >>> from mrl.models import NestedWidthMLP
        >>> model = MatryoshkaClassifier(NestedWidthMLP(10, num_features=4, hidden=(8,)), 3, [2, 4])
        >>> grid_parts(model, [1.0])[0][0]
        {'layer 1': 80, 'width 1: layers 2-L': 0, 'width 1: representation': 32, 'width 1: head 2': 6}
    """
    grid = []
    for w in widths:
        row = []
        for m in model.nesting:
            parts = model.backbone.flops_parts(w, m)
            key = model.backbone.width_label(w)
            parts[f"{key}: head" if model.head.tied else f"{key}: head {m}"] = m * model.head.num_classes
            row.append(parts)
        grid.append(row)
    return grid


def grid_flops(model: MatryoshkaClassifier, widths: Sequence[float]) -> np.ndarray:
    """Multiply-adds per example of each (width, size) pair run on its own, int64 [W, G]: the trunk
    at width w up to z[:m] (the representation's first m rows where its norm allows) plus the head.

    Example:
        >>> from mrl.models import NestedWidthMLP
        >>> model = MatryoshkaClassifier(NestedWidthMLP(10, num_features=4, hidden=(8,)), 3, [2, 4])
        >>> grid_flops(model, [0.5, 1.0]).tolist()
        [[62, 68], [118, 124]]
    """
    return np.asarray([[sum(parts.values()) for parts in row] for row in grid_parts(model, widths)], dtype=np.int64)


@torch.no_grad()
def width_logits(
    model: MatryoshkaClassifier, data: Dataset, split: str, width: float, device: torch.device, workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [G, N, C] (float32, CPU) of the width-``width`` submodel on one split, and top-1 [G]."""
    model.eval()
    part = data.split(split)
    hits, kept = torch.zeros(len(model.nesting), dtype=torch.long), []
    for x, y in eval_batches(part, device, workers=workers):
        batch = model(x, width=width).float().cpu()
        hits += topk_hits(batch, y, 1).sum(-1)
        kept.append(batch)
    return torch.cat(kept, dim=1), hits.double() / len(part)


def evaluate_grid(
    model: MatryoshkaClassifier, data: Dataset, widths: Sequence[float], device: torch.device, workers: int = 0,
    full_knn1: dict[int, float] | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Test top-1, 1-NN and FLOPs per example at every (width, size); val top-1 too.

    Args:
        model: a trained classifier with a nested-width backbone.
        data: its data set.
        widths: the widths to evaluate (usually the trained ones).
        workers: data loader workers (image folders).
        full_knn1: 1-NN per size of the full model when already known (the search is the
            costly part; width 1 is the full model).

    Returns:
        The grid {"widths", "nesting", "top1", "knn1", "val_top1", "flops"}, the last four keyed
        by width, then by size; and the logits {"val", "test"} float32 [W, G, N, C] (for
        :class:`~mrl.adaptive.widths.WidthDimCascade`).
    """
    nesting = model.nesting
    flops = grid_flops(model, widths)
    grid: dict = {"widths": list(widths), "nesting": list(nesting), "top1": {}, "knn1": {}, "val_top1": {}, "flops": {}}
    saved: dict[str, list[np.ndarray]] = {"val": [], "test": []}
    for w, row in zip(widths, flops):
        key = str(w)
        for split, name in (("val", "val_top1"), ("test", "top1")):
            logits, top1 = width_logits(model, data, split, w, device, workers)
            grid[name][key] = {str(m): float(v) for m, v in zip(nesting, top1)}
            saved[split].append(logits.numpy())
        if w == 1.0 and full_knn1 is not None:
            knn = full_knn1
        else:
            z_test, y_test = (np.concatenate(p) for p in zip(*embed_batches(model, data, "test", device, workers, width=w)))
            train = _blocks(embed_batches(model, data, "train", device, workers, width=w), KNN_BLOCK_ROWS)
            knn = knn1_accuracy_blocks(train, z_test, y_test, nesting)
        grid["knn1"][key] = {str(m): knn[m] for m in nesting}
        grid["flops"][key] = {str(m): int(f) for m, f in zip(nesting, row)}
    return grid, {split: np.stack(parts).astype(np.float32) for split, parts in saved.items()}
