"""MatryoshkaAdapter: f(e) = e + g(e), a residual MLP that gives frozen embeddings nested prefixes.

Matryoshka-Adaptor (Yoon et al., 2024, section 3): a model that was not trained with MRL's nested
loss (Kusupati et al. 2022, eq. 1) spreads information over all its coordinates, so its prefix
e[:m] retrieves poorly. A small adapter trained on the frozen embeddings alone (or with query /
document pairs) moves the information into the leading coordinates, so that f(e)[:m] can be used
at every size m of the nesting, as an MRL model's own prefixes would be.

g is Linear(d, h) -> GELU -> Linear(h, d) plus a linear path L e; the output layers of both paths
start at zero, so a new adapter is exactly the identity and training starts from the frozen model's
own geometry. The linear path is there because the main job is a change of basis (PCA is already a
good linear answer); the MLP adds what a rotation cannot.

Saved as a directory: ``adapter.safetensors`` (weights) and ``config.json`` (the constructor's
arguments plus how it was fitted), the same conventions as training runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mrl.artifacts import new_artifact, read_manifest
from mrl.config import MAX_DIM, config_from_dict
from mrl.errors import MRLError
from mrl.io import load_tensors, read_json, save_tensors, write_json
from mrl.nesting import default_nesting, truncate, validate_nesting

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "adapter.safetensors"
FORMAT = "mrl-adapter"
FORMAT_VERSION = 1
KIND = "adapter"


@dataclass
class AdapterConfig:
    """The constructor's arguments, saved beside the weights.

    Attributes:
        dim: size d of the frozen embeddings (input and output).
        nesting: prefix sizes the adapter is trained for; default 8, 16, ..., d.
        hidden_dim: width h of the MLP; default d (Yoon et al. use a small MLP of the embedding's width).
        linear: add the linear path L e (a learned change of basis, started at zero).
    """

    dim: int
    nesting: list[int] = field(default_factory=list)
    hidden_dim: int | None = None
    linear: bool = True

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterConfig:
        return config_from_dict(cls, data, "adapter").validate()

    def validate(self) -> AdapterConfig:
        """Check the types and sizes of a config read from disk; returns ``self``. Sizes are bounded
        by :data:`mrl.config.MAX_DIM` (as `mrl adapt fit --hidden-dim`), so a hostile or corrupt
        config is refused before the weights are allocated (10**9 would be 128 GB)."""
        for name in ("dim", "hidden_dim"):
            value = getattr(self, name)
            if value is None and name == "hidden_dim":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DIM:
                raise MRLError(f"adapter {name} must be a positive integer at most {MAX_DIM}, got {value!r}")
        if not isinstance(self.linear, bool):
            raise MRLError(f"adapter linear must be true or false, got {self.linear!r}")
        if not isinstance(self.nesting, list):
            raise MRLError(f"adapter nesting must be a list of prefix sizes, got {self.nesting!r}")
        return self


class MatryoshkaAdapter(nn.Module):
    """Residual adapter f(e) = e + L e + W2 GELU(W1 e + b1) + b2 on frozen embeddings [..., d].

    Args:
        dim: embedding size d.
        nesting: ascending prefix sizes, the largest at most d; default :func:`~mrl.nesting.default_nesting`.
        hidden_dim: MLP width; default d.
        linear: include the zero-initialised linear path L.

    Example:
        >>> adapter = MatryoshkaAdapter(16, nesting=[4, 8, 16])
        >>> e = torch.randn(3, 16)
        >>> torch.equal(adapter(e), e)   # a new adapter is the identity
        True
        >>> adapter.transform(e.numpy(), m=4, normalize=True).shape
        (3, 4)
    """

    def __init__(
        self,
        dim: int,
        nesting: Sequence[int] | None = None,
        hidden_dim: int | None = None,
        linear: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise MRLError(f"dim must be a positive integer, got {dim!r}")
        dim = int(dim)
        nesting = default_nesting(dim) if nesting is None or len(nesting) == 0 else validate_nesting(nesting, dim)
        if hidden_dim is None:
            hidden_dim = dim
        if isinstance(hidden_dim, bool) or not isinstance(hidden_dim, (int, np.integer)) or hidden_dim < 1:
            raise MRLError(f"hidden_dim must be a positive integer, got {hidden_dim!r}")
        self.config = AdapterConfig(dim=dim, nesting=list(nesting), hidden_dim=int(hidden_dim), linear=bool(linear))
        self.hidden = nn.Linear(dim, int(hidden_dim))
        self.activation = nn.GELU()
        self.out = nn.Linear(int(hidden_dim), dim)
        self.linear = nn.Linear(dim, dim, bias=False) if linear else None
        # Zero output layers: the adapter starts as the identity, so training starts from the
        # frozen model's geometry and the reconstruction term starts at zero.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        if self.linear is not None:
            nn.init.zeros_(self.linear.weight)

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def nesting(self) -> list[int]:
        return list(self.config.nesting)

    def _check_dim(self, size: int) -> None:
        if size != self.dim:
            raise MRLError(
                f"embeddings have {size} dimensions but this adapter was built for {self.dim}-dimensional "
                "embeddings; use the embedding model the adapter was fitted on"
            )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Adapted embeddings, same shape [..., d] and dtype as the input."""
        return self._adapt(embeddings).to(embeddings.dtype)

    def _adapt(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Adapted embeddings [..., d] in the weights' dtype (float32), whatever the input's dtype."""
        self._check_dim(embeddings.shape[-1])
        x = embeddings.to(self.out.weight.dtype)
        delta = self.out(self.activation(self.hidden(x)))
        if self.linear is not None:
            delta = delta + self.linear(x)
        return x + delta

    @torch.no_grad()
    def transform(
        self,
        embeddings: np.ndarray | torch.Tensor,
        m: int | None = None,
        normalize: bool = False,
        batch_size: int = 8192,
    ) -> np.ndarray | torch.Tensor:
        """Adapt embeddings in batches, optionally keep the prefix [:m] and L2-normalise it.

        Args:
            embeddings: [N, d] or [..., d], numpy array or tensor, any float dtype.
            m: prefix size to keep (default: all d).
            normalize: L2-normalise the (prefix) output, as cosine retrieval needs.
            batch_size: rows per forward pass.

        Returns:
            The same kind (numpy or torch) and dtype as the input, shape [..., m]. The adapter and
            the normalisation run in float32 (a float16 input of large values would overflow in
            between); a result that is not finite in the input's dtype is refused.

        Raises:
            MRLError: the input holds NaN or infinite values, or the result does not fit its dtype.
        """
        is_numpy = isinstance(embeddings, np.ndarray)
        x = torch.from_numpy(np.asarray(embeddings)) if is_numpy else embeddings
        if not x.is_floating_point():
            raise MRLError(f"embeddings must be floating point, got dtype {x.dtype}")
        if not torch.isfinite(x).all():
            raise MRLError("embeddings contain NaN or infinite values; an adapter only maps finite embeddings")
        self._check_dim(x.shape[-1])
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= self.dim):
            raise MRLError(f"prefix size m must be an integer in [1, {self.dim}], got {m!r}")
        flat = x.reshape(-1, self.dim)
        device = self.out.weight.device
        was_training = self.training
        self.eval()
        try:
            parts = [self._adapt(flat[i : i + batch_size].to(device)).cpu() for i in range(0, len(flat), batch_size)]
        finally:
            self.train(was_training)
        out = (torch.cat(parts) if parts else flat.to(self.out.weight.dtype)).reshape(x.shape)
        out = truncate(out, m if m is not None else self.dim, normalize=normalize).to(x.dtype)
        if not torch.isfinite(out).all():
            bad = int((~torch.isfinite(out)).sum())
            raise MRLError(
                f"{bad} adapted values are not finite in dtype {x.dtype} (they overflow it); "
                "convert the embeddings to float32 or normalise them"
            )
        return out.numpy() if is_numpy else out.to(embeddings.device)

    def save(
        self, directory: str | os.PathLike, fit_info: Mapping[str, Any] | None = None, overwrite: bool = False,
        inputs: Sequence[str | os.PathLike] = (),
    ) -> Path:
        """Write ``config.json``, ``adapter.safetensors`` and their manifest into ``directory`` atomically.

        Args:
            directory: output folder (must not exist unless ``overwrite``).
            fit_info: JSON-serialisable record of how the adapter was fitted (config, history).
            overwrite: replace an existing adapter directory (never any other folder).
            inputs: files the adapter was fitted on; a directory holding one is never replaced.
        """
        with new_artifact(directory, KIND, overwrite, inputs, format_version=FORMAT_VERSION) as tmp:
            save_tensors(tmp / WEIGHTS_FILE, self.state_dict(), metadata={"format": FORMAT})
            write_json(
                tmp / CONFIG_FILE,
                {"format": FORMAT, "version": FORMAT_VERSION, "adapter": asdict(self.config), "fit": dict(fit_info or {})},
            )
        return Path(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> MatryoshkaAdapter:
        """Read an adapter written by :meth:`save`, verified against its manifest (safetensors only, never pickle)."""
        directory = Path(directory)
        read_manifest(directory, KIND, FORMAT_VERSION)
        meta = read_json(directory / CONFIG_FILE)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise MRLError(f"{directory / CONFIG_FILE} is not an mrl adapter config (format {FORMAT!r} expected)")
        if meta.get("version") != FORMAT_VERSION:
            raise MRLError(f"adapter format version {meta.get('version')!r} is not supported (expected {FORMAT_VERSION})")
        if not isinstance(meta.get("adapter"), dict):
            raise MRLError(f"{directory / CONFIG_FILE} has no 'adapter' settings object")
        config = AdapterConfig.from_dict(meta["adapter"])
        adapter = cls(config.dim, config.nesting, config.hidden_dim, config.linear)
        state = load_tensors(directory / WEIGHTS_FILE)
        expected = adapter.state_dict()
        if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in expected):
            raise MRLError(f"{directory / WEIGHTS_FILE} does not match its config.json (dim={config.dim}, hidden_dim={config.hidden_dim})")
        adapter.load_state_dict(state)
        return adapter

    def extra_repr(self) -> str:
        return f"dim={self.dim}, nesting={self.nesting}, linear={self.linear is not None}"


def read_fit_info(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``fit`` record saved with an adapter (how it was trained), verified against the manifest."""
    read_manifest(directory, KIND, FORMAT_VERSION, verify=[CONFIG_FILE])
    fit = read_json(Path(directory) / CONFIG_FILE).get("fit", {})
    if not isinstance(fit, dict):
        raise MRLError(f"{Path(directory) / CONFIG_FILE}: 'fit' must be a JSON object")
    return dict(fit)
