"""TrainConfig: everything that defines a training run, saved beside its weights as config.json.

Modes follow the MRL paper (section 4): ``mrl`` trains one head per nesting size, ``mrl-e`` ties
them (W_m = W[:, :m]), ``ff`` trains the fixed-feature baseline whose representation has exactly
``ff_dim`` dims (one such model per size is the paper's FF row).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mrl.errors import MRLError
from mrl.io import read_json, write_json
from mrl.models import MODELS
from mrl.models.widths import parse_widths
from mrl.nesting import parse_nesting, validate_nesting

MODES = ("mrl", "mrl-e", "ff")


def config_from_dict(cls: type, values: Mapping[str, Any], what: str):
    """``cls(**values)`` for a config dataclass; unknown keys are an error that names them.

    Example:
        >>> config_from_dict(TrainConfig, {"epochs": 3}, "training").epochs
        3
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise MRLError(f"unknown {what} config key(s) {unknown}; known keys: {sorted(known)}")
    return cls(**values)


@dataclass
class TrainConfig:
    data: str = "fashion-mnist"
    data_dir: str | None = None  # folder with the IDX files; None = Debian's Fashion-MNIST folder
    mode: str = "mrl"
    arch: str | None = None  # None: "resnet" for images, "mlp" for feature vectors
    rep_dim: int = 2048  # the paper's ResNet-50 representation size
    ff_dim: int | None = None  # representation size of an FF run (mode "ff" only)
    nesting: list[int] | None = None  # None: 8, 16, ..., rep_dim (the paper's M)
    loss_weights: list[float] | None = None  # c_m; None: all 1 as in the paper
    widths: list[float] | None = None  # MatFormer widths of the MLP's hidden layers; None: the plain MLP
    hidden: list[int] | None = None  # MLP hidden layer sizes; None: the backbone's default (512, 512)
    epochs: int = 10
    batch_size: int = 256  # global batch, split across DDP ranks
    lr: float = 2e-3  # AdamW with a cosine schedule to 0: robust on small data without tuning
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5  # linear warm-up keeps early Adam steps on a 2048-d head stable
    augment: bool = True  # images only: random horizontal flip and +-2 pixel shift
    max_train: int | None = None
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # for derived runs (e.g. baselines)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise MRLError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if self.arch is not None and self.arch not in MODELS:
            raise MRLError(f"unknown arch {self.arch!r}; known: {', '.join(sorted(MODELS))}")
        for name in ("epochs", "batch_size", "rep_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MRLError(f"{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.max_train is not None and self.max_train < 1:
            raise MRLError(f"max-train must be a positive integer, got {self.max_train}")
        if not (self.lr > 0):
            raise MRLError(f"lr must be positive, got {self.lr}")
        if self.mode == "ff":
            if self.ff_dim is None:
                raise MRLError("mode ff needs --ff-dim M (the representation size of this FF model)")
            if isinstance(self.ff_dim, bool) or not isinstance(self.ff_dim, int) or self.ff_dim < 1:
                raise MRLError(f"ff-dim must be a positive integer, got {self.ff_dim!r}")
            self.rep_dim = self.ff_dim
            self.nesting = [self.ff_dim]
        elif self.ff_dim is not None:
            raise MRLError(f"--ff-dim only applies to mode ff, not {self.mode}")
        if isinstance(self.nesting, str) or self.nesting is None:
            self.nesting = parse_nesting(self.nesting, self.rep_dim)
        else:
            self.nesting = validate_nesting(self.nesting, self.rep_dim)
        self.widths = parse_widths(self.widths)
        if self.hidden is not None and (
            not isinstance(self.hidden, list) or not self.hidden
            or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in self.hidden)
        ):
            raise MRLError(f"hidden must be a non-empty list of positive integers, got {self.hidden!r}")
        if self.arch == "resnet" and (self.widths is not None or self.hidden is not None):
            raise MRLError("widths and hidden apply to the mlp backbone; pass --arch mlp")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.nesting):
            raise MRLError(
                f"loss weights need one value per nesting size ({len(self.nesting)}), got {len(self.loss_weights)}"
            )

    @property
    def tied(self) -> bool:
        return self.mode == "mrl-e"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        return config_from_dict(cls, values, "training")

    def save(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        values = read_json(path)
        if not isinstance(values, dict):
            raise MRLError(f"{path} does not hold a training config (expected a JSON object)")
        return cls.from_dict(values)
