"""The (width x dim) grid of a nested-width run: top-1, 1-NN and FLOPs per example at every pair.

A run trained with ``widths`` (:mod:`mrl.models.widths`, MatFormer) holds one model per width w,
and each has the Matryoshka sizes m of the MRL paper (Kusupati et al., NeurIPS 2022, Tables 1-2):
linear top-1 uses the head of size m on z_w[:m], 1-NN searches the train embeddings z_w[:m] with
the test ones (cosine, as :func:`mrl.evaluation.knn1_accuracy`).

FLOPs per example count the multiply-adds of the linear layers that answer at (w, m): the trunk at
width w (:meth:`~mrl.models.widths.NestedWidthMLP.flops`) plus the head m x C (norms, activations,
and for 1-NN the search itself, not counted). Grids are dicts keyed by width (as in the config,
e.g. ``"0.25"``) then by size (``"8"``), like eval.json's per-size series.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from mrl.data import Dataset
from mrl.evaluation import knn1_accuracy, topk_accuracy
from mrl.models import MatryoshkaClassifier


def grid_flops(model: MatryoshkaClassifier, widths: Sequence[float]) -> np.ndarray:
    """Multiply-adds per example of each (width, size) pair, int64 [W, G].

    Example:
        >>> from mrl.models import NestedWidthMLP
        >>> model = MatryoshkaClassifier(NestedWidthMLP(10, num_features=4, hidden=(8,)), 3, [2, 4])
        >>> grid_flops(model, [0.5, 1.0]).tolist()
        [[62, 68], [118, 124]]
    """
    heads = np.asarray(model.nesting, dtype=np.int64) * model.head.num_classes
    return np.asarray([[model.backbone.flops(w) + h for h in heads] for w in widths], dtype=np.int64)


@torch.no_grad()
def width_outputs(
    model: MatryoshkaClassifier, x: torch.Tensor, width: float, device: torch.device, batch_size: int = 1024
) -> tuple[torch.Tensor, np.ndarray]:
    """Logits [G, N, C] and representations z [N, d] (float32 numpy) of the width-``width`` submodel."""
    model.eval()
    logits, reps = [], []
    for i in range(0, len(x), batch_size):
        z = model.embed(x[i : i + batch_size].to(device), width)
        logits.append(model.head(z).float().cpu())
        reps.append(z.float().cpu())
    return torch.cat(logits, dim=1), torch.cat(reps).numpy()


def evaluate_grid(
    model: MatryoshkaClassifier, data: Dataset, widths: Sequence[float], device: torch.device,
    progress: bool = False, full_knn1: dict[int, float] | None = None,
) -> tuple[dict, dict[str, np.ndarray]]:
    """Test top-1, 1-NN and FLOPs per example at every (width, size); val top-1 too.

    Args:
        model: a trained classifier with a nested-width backbone.
        data: its data set.
        widths: the widths to evaluate (usually the trained ones).
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
    for w, row in zip(tqdm(widths, desc="widths", disable=not progress, leave=False), flops):
        key = str(w)
        val_logits, _ = width_outputs(model, data.val.x, w, device)
        test_logits, z_test = width_outputs(model, data.test.x, w, device)
        if w == 1.0 and full_knn1 is not None:
            knn = full_knn1
        else:
            _, z_train = width_outputs(model, data.train.x, w, device)
            knn = knn1_accuracy(z_train, data.train.y.numpy(), z_test, data.test.y.numpy(), nesting)
        grid["top1"][key] = {str(m): float(v) for m, v in zip(nesting, topk_accuracy(test_logits, data.test.y, 1))}
        grid["val_top1"][key] = {str(m): float(v) for m, v in zip(nesting, topk_accuracy(val_logits, data.val.y, 1))}
        grid["knn1"][key] = {str(m): knn[m] for m in nesting}
        grid["flops"][key] = {str(m): int(f) for m, f in zip(nesting, row)}
        saved["val"].append(val_logits.numpy())
        saved["test"].append(test_logits.numpy())
    return grid, {split: np.stack(parts).astype(np.float32) for split, parts in saved.items()}
