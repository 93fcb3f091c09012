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
from mrl.models import MODELS, is_model_name
from mrl.models.mlp import REP_ACTIVATIONS
from mrl.models.widths import NORMS, WIDTH_SAMPLING, max_width_samples, parse_width_weights, parse_widths
from mrl.nesting import parse_nesting, validate_nesting
from mrl.recipe import OPTIMIZERS, PRECISIONS, SCHEDULES
from mrl.validation import check_choice, check_float, check_int, check_seed

MODES = ("mrl", "mrl-e", "ff")
# Upper bounds that only refuse absurd values (a typo or a hostile config), never a real run.
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 20
MAX_DIM = 1 << 16
MAX_LR = 10.0  # AdamW diverges far below this; 1e30 or inf is always a mistake
# Keys whose value is a string (names and paths); the optional ones may also be null.
STRING_KEYS = ("data", "data_dir", "mode", "arch", "rep_activation", "width_norm", "width_sampling", "precision",
               "optimizer", "schedule")
OPTIONAL_STRING_KEYS = ("data_dir", "arch")


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
    # mlp only: "none" ends the representation at its BatchNorm; "relu" adds the paper's final ReLU
    # (its pooled ResNet features end with one). "none" won at the demo setting over 3 seeds (README).
    rep_activation: str = "none"
    head_lr_scale: float = 1.0  # the heads' learning rate relative to lr
    widths: list[float] | None = None  # MatFormer widths of the MLP's hidden layers; None: the plain MLP
    width_norm: str = "layer"  # nested widths' norm: layer, or batch (switchable BatchNorm, one per width)
    width_sampling: str = "all"  # widths trained per step: all, random (k of them), sandwich (smallest + full + k)
    width_samples: int = 1  # k of random / sandwich; 1 is MatFormer's one random granularity per step
    # in-place distillation: share of the full width's soft predictions in each smaller width's loss
    # (the rest is the labels'); 0 trains on labels only, as MatFormer does, 1 is US-Nets' recipe
    width_distill: float = 0.0
    width_weights: list[float] | None = None  # each width's share of the loss, one per width; None: all 1 (MatFormer)
    hidden: list[int] | None = None  # MLP hidden layer sizes; None: the backbone's default (512, 512)
    epochs: int = 10
    batch_size: int = 256  # global batch, split across DDP ranks
    lr: float = 2e-3  # AdamW with a cosine schedule to 0: robust on small data without tuning
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.5  # linear warm-up keeps early Adam steps on a 2048-d head stable
    augment: bool = True  # images only: random horizontal flip and +-2 pixel shift
    max_train: int | None = None
    seed: int = 0
    # Paper-scale settings (issue 16); the defaults are the small-data behaviour above, unchanged.
    image_size: int | None = None  # streamed image folders: crop side S; None = 224, ResNet-50's ImageNet size
    workers: int = 0  # DataLoader processes decoding a streamed folder; 0 decodes in the training process
    precision: str = "fp32"  # fp32 | bf16 | fp16 autocast (fp16 with a GradScaler)
    channels_last: bool = False  # NHWC memory layout: faster convolutions on tensor cores
    compile: bool = False  # torch.compile the model (slow first step, faster after)
    accumulate: int = 1  # split each batch into K micro-batches (same optimizer steps, less memory)
    label_smoothing: float = 0.0  # the paper's FFCV ResNet-50 recipe uses 0.1
    optimizer: str = "adamw"  # adamw | sgd (momentum; the paper's recipe)
    momentum: float = 0.9  # sgd only
    schedule: str = "cosine"  # cosine to 0 | step (x lr_gamma every lr_step_epochs)
    lr_step_epochs: int = 30  # step schedule: torchvision's ResNet recipe
    lr_gamma: float = 0.1  # step schedule: factor per step
    extra: dict[str, Any] = field(default_factory=dict)  # for derived runs (e.g. baselines)

    def __post_init__(self) -> None:
        self._check_string_types()
        check_choice("mode", self.mode, MODES)
        if not isinstance(self.data, str) or not self.data:
            raise MRLError(f"data must be a data set name or path, got {self.data!r}")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise MRLError(f"data-dir must be a path or null, got {self.data_dir!r}")
        if self.arch is not None and not is_model_name(self.arch):
            raise MRLError(f"arch must be one of {', '.join(sorted(MODELS))} or timm/<name>, got {self.arch!r}")
        self.epochs = check_int("epochs", self.epochs, min=1, max=MAX_EPOCHS)
        self.batch_size = check_int("batch-size", self.batch_size, min=1, max=MAX_BATCH)
        self.rep_dim = check_int("rep-dim", self.rep_dim, min=1, max=MAX_DIM)
        if self.max_train is not None:
            self.max_train = check_int("max-train", self.max_train, min=1)
        self.seed = check_seed("seed", self.seed)
        self.lr = check_float("lr", self.lr, min=0, max=MAX_LR, min_open=True)
        self.weight_decay = check_float("weight-decay", self.weight_decay, min=0, max=1e3)
        self.warmup_epochs = check_float("warmup-epochs", self.warmup_epochs, min=0, max=MAX_EPOCHS)
        self.head_lr_scale = check_float("head-lr-scale", self.head_lr_scale, min=0, max=1e3, min_open=True)
        check_choice("rep-activation", self.rep_activation, REP_ACTIVATIONS)
        if not isinstance(self.augment, bool):
            raise MRLError(f"augment must be true or false, got {self.augment!r}")
        if not isinstance(self.extra, dict):
            raise MRLError(f"extra must be a JSON object, got {self.extra!r}")
        self._check_scale_settings()
        if self.mode == "ff":
            if self.ff_dim is None:
                raise MRLError("mode ff needs --ff-dim M (the representation size of this FF model)")
            self.ff_dim = check_int("ff-dim", self.ff_dim, min=1, max=MAX_DIM)
            self.rep_dim = self.ff_dim
            self.nesting = [self.ff_dim]
        elif self.ff_dim is not None:
            raise MRLError(f"--ff-dim only applies to mode ff, not {self.mode}")
        if isinstance(self.nesting, str) or self.nesting is None:
            self.nesting = parse_nesting(self.nesting, self.rep_dim)
        else:
            self.nesting = validate_nesting(self.nesting, self.rep_dim)
        if self.loss_weights is not None:
            if not isinstance(self.loss_weights, list) or len(self.loss_weights) != len(self.nesting):
                raise MRLError(f"loss weights need one value per nesting size ({len(self.nesting)}), got {self.loss_weights!r}")
            self.loss_weights = [check_float("every loss weight", w, min=0, max=1e6) for w in self.loss_weights]
        self.widths = parse_widths(self.widths)
        self._check_width_options()
        if isinstance(self.hidden, str):
            try:
                self.hidden = [int(part) for part in self.hidden.split(",")]
            except ValueError:
                raise MRLError(f"hidden must be comma-separated layer sizes, got {self.hidden!r}") from None
        if self.hidden is not None:
            if not isinstance(self.hidden, list) or not self.hidden:
                raise MRLError(f"hidden must be a non-empty list of layer sizes, got {self.hidden!r}")
            self.hidden = [check_int("every hidden size", h, min=1, max=MAX_DIM) for h in self.hidden]
        if self.arch not in (None, "mlp") and (self.widths is not None or self.hidden is not None):
            raise MRLError("widths and hidden apply to the mlp backbone; pass --arch mlp")

    def _check_string_types(self) -> None:
        """Refuse a string-valued key given another JSON type ({"arch": 5}) before any check uses it."""
        for name in STRING_KEYS:
            value = getattr(self, name)
            if value is None and name in OPTIONAL_STRING_KEYS:
                continue
            if not isinstance(value, str):
                allowed = "a string or null" if name in OPTIONAL_STRING_KEYS else "a string"
                raise MRLError(f"{name.replace('_', '-')} must be {allowed}, got {type(value).__name__} {value!r}")

    def _check_width_options(self) -> None:
        check_choice("width-norm", self.width_norm, NORMS)
        check_choice("width-sampling", self.width_sampling, WIDTH_SAMPLING)
        self.width_distill = check_float("width-distill", self.width_distill, min=0, max=1)
        if self.widths is None and (self.width_norm != "layer" or self.width_sampling != "all" or self.width_distill
                                    or self.width_weights is not None):
            raise MRLError("width-norm, width-sampling, width-distill and width-weights apply to nested widths; pass --widths")
        if self.widths is not None:
            self.width_weights = parse_width_weights(self.width_weights, len(self.widths))
        if self.width_distill and self.width_sampling == "random":
            raise MRLError("width-distill needs the full width in every step (its teacher): use width-sampling all or "
                           "sandwich, not random")
        least = 1 if self.width_sampling == "random" else 0
        most = MAX_DIM if self.width_sampling == "all" else max_width_samples(self.widths, self.width_sampling)
        self.width_samples = check_int("width-samples", self.width_samples, min=least, max=most)

    def _check_scale_settings(self) -> None:
        self.accumulate = check_int("accumulate", self.accumulate, min=1, max=MAX_BATCH)
        self.lr_step_epochs = check_int("lr-step-epochs", self.lr_step_epochs, min=1, max=MAX_EPOCHS)
        for name in ("channels_last", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise MRLError(f"{name.replace('_', '-')} must be true or false, got {getattr(self, name)!r}")
        if self.image_size is not None:
            check_int("image-size", self.image_size, min=1, max=MAX_DIM)
        check_int("workers", self.workers, min=0)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        if self.batch_size % self.accumulate:
            raise MRLError(f"batch-size {self.batch_size} must be divisible by accumulate {self.accumulate}")
        check_float("label-smoothing", self.label_smoothing, min=0, max=1, max_open=True)
        check_float("momentum", self.momentum, min=0, max=1, max_open=True)
        check_float("lr-gamma", self.lr_gamma, min=0, max=1, min_open=True)

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
