"""Nesting lists: the prefix sizes M at which a Matryoshka representation is trained and used.

The MRL paper (Kusupati et al., NeurIPS 2022, section 3) uses M = {8, 16, ..., d}, about log2(d)
sizes, so that every prefix z[:m] is a representation on its own. This module validates such lists,
builds the default one and truncates vectors to a prefix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

import numpy as np
import torch

from mrl.errors import MRLError
from mrl.validation import split_numbers

ArrayLike = TypeVar("ArrayLike", torch.Tensor, np.ndarray)


def default_nesting(dim: int, start: int = 8) -> list[int]:
    """Powers of two from ``start`` up to ``dim``, plus ``dim`` itself when it is not one.

    Example:
        >>> default_nesting(2048)
        [8, 16, 32, 64, 128, 256, 512, 1024, 2048]
        >>> default_nesting(384)
        [8, 16, 32, 64, 128, 256, 384]
    """
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or dim < 1:
        raise MRLError(f"representation size must be a positive integer, got {dim!r}")
    sizes = []
    m = start
    while m < dim:
        sizes.append(m)
        m *= 2
    sizes.append(int(dim))
    return sizes


def validate_nesting(nesting: Iterable[int], dim: int | None = None) -> list[int]:
    """Check a nesting list and return it as a list of ints.

    Sizes must be positive integers, strictly ascending, and (when ``dim`` is given) at most ``dim``.

    Raises:
        MRLError: naming the offending value.

    Example:
        >>> validate_nesting([8, 16, 32], dim=32)
        [8, 16, 32]
    """
    try:
        sizes = list(nesting)
    except TypeError:
        raise MRLError(f"nesting must be a list of positive integers, got {nesting!r}") from None
    if not sizes:
        raise MRLError("nesting must not be empty")
    out = []
    for m in sizes:
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)):
            raise MRLError(f"nesting sizes must be integers, got {m!r} in {sizes}")
        if m <= 0:
            raise MRLError(f"nesting sizes must be positive, got {m} in {sizes}")
        out.append(int(m))
    for a, b in zip(out, out[1:]):
        if b <= a:
            raise MRLError(f"nesting must be strictly ascending, got {out}")
    if dim is not None and out[-1] > dim:
        raise MRLError(f"nesting size {out[-1]} is larger than the representation size {dim}")
    return out


def parse_nesting(text: str | Sequence[int] | None, dim: int) -> list[int]:
    """Parse ``"8,16,32"`` (or a sequence, or None for the default) into a validated nesting list.

    Example:
        >>> parse_nesting("8, 16,64", dim=64)
        [8, 16, 64]
    """
    if text is None or (isinstance(text, str) and not text.strip()):
        return default_nesting(dim)
    if isinstance(text, str):
        return validate_nesting(split_numbers(text, int, f"nesting must be comma-separated integers, got {text!r}"), dim)
    return validate_nesting(text, dim)


# The one floor on prefix norms, for training (MatryoshkaLoss) and search alike (retrieval, 1-NN):
# a zero prefix stays zero, its gradient stays bounded (1/floor) instead of overflowing Adam's second
# moment as 1e-12 would, and the same vectors rank the same way in evaluation and in a FunnelIndex.
PREFIX_NORM_FLOOR = 1e-6


def truncate(z: ArrayLike, m: int, normalize: bool = False, eps: float = PREFIX_NORM_FLOOR) -> ArrayLike:
    """Keep the first ``m`` coordinates of each vector, then optionally L2-normalise.

    Truncation comes first, so ``truncate(z, m, normalize=True)`` is the unit vector in the
    direction of the prefix z[..., :m], not a prefix of the normalised z. Works on torch tensors
    and numpy arrays of shape [..., d]. Norms below ``eps`` (:data:`PREFIX_NORM_FLOOR`) count as
    ``eps``: zero vectors stay zero and the gradient at a zero prefix stays bounded.

    Args:
        z: vectors [..., d].
        m: prefix size, 1 <= m <= d.
        normalize: divide each prefix by its L2 norm.

    Example:
        >>> import numpy as np
        >>> truncate(np.array([[3.0, 4.0, 12.0]]), 2, normalize=True)
        array([[0.6, 0.8]])
    """
    d = z.shape[-1]
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= d:
        raise MRLError(f"prefix size m must be an integer in [1, {d}], got {m!r}")
    prefix = z[..., :m]
    if not normalize:
        return prefix
    if isinstance(prefix, torch.Tensor):
        return torch.nn.functional.normalize(prefix, dim=-1, eps=eps)
    norms = np.linalg.norm(prefix, axis=-1, keepdims=True)
    return prefix / np.maximum(norms, eps)
