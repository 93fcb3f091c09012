"""A compact decoder-only transformer LM with Matryoshka output heads.

The trunk follows nanoGPT's model.py (Karpathy; itself after GPT-2, Radford et al. 2019): token and
learned position embeddings, pre-LayerNorm blocks of causal self-attention and a 4x GELU MLP, a
final LayerNorm. The output layer is Matryoshka; with ``widths``, so is every MLP's hidden width
(MatFormer, :mod:`mrl.models.widths`). Next-token prediction is a multi-class classification over
the vocabulary, so the heads are the paper's (Kusupati et al. 2022):

* ``"mrl"``: one linear head W_m per nesting size on the prefix h[:m] of the final hidden state
  (eq. 1), via :class:`mrl.heads.MatryoshkaLinear`.
* ``"mrl-e"``: MRL-E (section 3), W_m = E[:, :m] where E [V, d] is the input token embedding, as
  in the paper's BERT variant (section 4.3); all sizes cost one full head via
  :func:`mrl.heads.nested_logits`. One bias per size.
* ``"ff"``: the fixed-feature baseline of size m (section 4). Like the paper's ResNet FF models,
  the trunk is unchanged and only the final representation is m-dimensional: a learned projection
  d -> m after the final LayerNorm (initialised as truncation to h[:m]), then a head m -> V. A whole transformer of width m would also
  shrink attention and MLPs (a width-16 trunk is a different, much weaker model), so it would not
  isolate the output representation, which is what MRL nests.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from mrl.config import config_from_dict
from mrl.errors import MRLError
from mrl.heads import MatryoshkaLinear, nested_logits
from mrl.models.widths import NestedFFN, WidthSpec, parse_widths, per_layer
from mrl.nesting import validate_nesting
from mrl.validation import check_int

HEAD_KINDS = ("mrl", "mrl-e", "ff")


@dataclass
class LMConfig:
    """Shape of the LM. Defaults fit a few CPU minutes of training per model."""

    vocab_size: int = 4096  # several thousand BPE tokens, so that the output head dominates
    context: int = 64  # WordNet glosses average ~15 BPE tokens; 64 covers a gloss and its examples
    d_model: int = 256  # the paper's nesting needs room: 16 .. 256 is five sizes
    n_layers: int = 4
    n_heads: int = 4
    head: str = "mrl"  # one of HEAD_KINDS
    nesting: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 256])  # for "ff": [m]
    widths: list[float] | None = None  # MatFormer widths of every FFN's hidden layer; None: trained at full width only
    ffn_hidden: int | None = None  # FFN hidden units; None: 4 * d_model as in GPT-2 (smaller: a width baseline)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context", "d_model", "n_layers", "n_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MRLError(f"{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise MRLError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.head not in HEAD_KINDS:
            raise MRLError(f"head must be one of {', '.join(HEAD_KINDS)}, got {self.head!r}")
        self.nesting = validate_nesting(self.nesting, self.d_model)
        if self.head == "ff" and len(self.nesting) != 1:
            raise MRLError(f"an ff model has one final size, nesting=[m]; got {self.nesting}")
        self.widths = parse_widths(self.widths)
        if self.ffn_hidden is not None:
            self.ffn_hidden = check_int("ffn_hidden", self.ffn_hidden, min=1, max=1 << 20)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> LMConfig:
        """Build from a dict (e.g. config.json's "model"); unknown keys are errors."""
        return config_from_dict(cls, values, "model")


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model)
        self.mlp = NestedFFN(cfg.d_model, cfg.ffn_hidden or 4 * cfg.d_model)

    def forward(self, x: torch.Tensor, width: float | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x), width)


class MatryoshkaLM(nn.Module):
    """Decoder-only transformer whose output layer predicts the next token at every nesting size.

    Args:
        config: an :class:`LMConfig`.

    ``width`` (forward, hidden) runs the nested-width submodel (MatFormer, :mod:`mrl.models.widths`):
    every FFN keeps the first round(w * h) of its h hidden units (h = 4d unless ``ffn_hidden``);
    one fraction for all blocks or one per block; None is the full model.

    Shape:
        forward: ids [B, T] (T <= context) -> logits [G, B, T, V], G = len(nesting).
        hidden: ids [B, T] -> h [B, T, d] (after the final LayerNorm).

    Example:
        >>> model = MatryoshkaLM(LMConfig(vocab_size=50, context=8, d_model=16, n_layers=1,
        ...                               n_heads=2, head="mrl-e", nesting=[4, 16]))
        >>> model(torch.randint(0, 50, (3, 8))).shape
        torch.Size([2, 3, 8, 50])
    """

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        self.nesting = config.nesting
        d = config.d_model
        self.wte = nn.Embedding(config.vocab_size, d)
        self.wpe = nn.Embedding(config.context, d)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(d)
        if config.head == "mrl":
            self.head = MatryoshkaLinear(d, config.vocab_size, config.nesting, tied=False)
        elif config.head == "mrl-e":
            self.head_bias = nn.Parameter(torch.zeros(len(config.nesting), config.vocab_size))
        else:
            m = config.nesting[0]
            self.ff_proj = nn.Linear(d, m, bias=False)
            self.head = nn.Linear(m, config.vocab_size)
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections keeps the residual stream's variance flat.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layers))
        if config.head == "ff":
            # Start the d -> m projection as truncation to h[:m]: at m = d the FF model then is the
            # plain LM, and a small m starts where MRL's prefix does instead of from a random
            # rank-m map (which measurably slowed FF training: see the lm benchmark notes).
            with torch.no_grad():
                self.ff_proj.weight.copy_(torch.eye(d)[: config.nesting[0]])

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear) and not isinstance(module, MatryoshkaLinear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def hidden(self, ids: torch.Tensor, width: WidthSpec = None) -> torch.Tensor:
        """Final hidden states h [B, T, d] (after the final LayerNorm)."""
        if ids.dim() != 2:
            raise MRLError(f"ids must be [batch, time], got shape {tuple(ids.shape)}")
        T = ids.shape[1]
        if not 1 <= T <= self.config.context:
            raise MRLError(f"sequence length must be in [1, {self.config.context}] (the context), got {T}")
        pos = torch.arange(T, device=ids.device)
        x = self.wte(ids) + self.wpe(pos)
        for block, w in zip(self.blocks, per_layer(width, len(self.blocks))):
            x = block(x, w)
        return self.ln_f(x)

    def logits_from_hidden(self, h: torch.Tensor, index: int | None = None) -> torch.Tensor:
        """Logits at every size [G, ..., V], or at nesting position ``index`` only [..., V]."""
        if self.config.head == "ff":
            out = self.head(self.ff_proj(h))
            return out if index is not None else out.unsqueeze(0)
        if index is None:
            if self.config.head == "mrl":
                return self.head(h)
            return nested_logits(h, self.wte.weight, self.nesting, self.head_bias)
        m = self.nesting[index]
        if self.config.head == "mrl":
            weight, bias = self.head.head_weight(index)
        else:
            weight, bias = self.wte.weight[:, :m], self.head_bias[index]
        return F.linear(h[..., :m], weight, bias)

    def per_size_logits(self, h: torch.Tensor) -> list[torch.Tensor]:
        """Logits at every size as a list of G tensors [..., V] (the same values as
        :meth:`logits_from_hidden`). Training uses this: on a CPU, stacking G vocabulary-sized
        tensors (and the tied head's cumulative sum) costs more than the products themselves."""
        return [self.logits_from_hidden(h, g) for g in range(len(self.nesting))]

    def head_block_logits(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """MRL-E only: the partial product h[..., start:stop] E[:, start:stop]^T, no bias [..., V].

        A cascade that moves from size ``start`` to ``stop`` adds this to the logits it already has,
        so a tied head's cascade costs (stop - start) * V per step, not stop * V.
        """
        if self.config.head != "mrl-e":
            raise MRLError(f"head_block_logits needs a tied (mrl-e) head, this model's head is {self.config.head!r}")
        return h[..., start:stop] @ self.wte.weight[:, start:stop].T

    def forward(self, ids: torch.Tensor, width: WidthSpec = None) -> torch.Tensor:
        return self.logits_from_hidden(self.hidden(ids, width))

    def trunk_flops(self, width: WidthSpec = None) -> int:
        """Multiply-adds per token of the transformer blocks at ``width``, over a full context.

        Per block: the attention projections 4 d^2, the scores and the weighted sum d (T + 1) (a
        token at position t attends to t + 1 positions; the mean over the T positions of 2 d (t + 1)),
        and the FFN 2 d k at its k active units. Embeddings, norms, softmax and the head not counted
        (the head's cost per size is :func:`mrl.lm.evaluate.decoding_costs`).

        Example:
            >>> model = MatryoshkaLM(LMConfig(vocab_size=50, context=8, d_model=16, n_layers=1, n_heads=2,
            ...                               nesting=[4, 16], widths=[0.25, 1]))
            >>> model.trunk_flops(), model.trunk_flops(0.25)  # 4*256 + 16*9 + 2*16*64, then k = 16
            (3216, 1680)
        """
        d, T = self.config.d_model, self.config.context
        return sum(4 * d * d + d * (T + 1) + block.mlp.flops(w)
                   for block, w in zip(self.blocks, per_layer(width, len(self.blocks))))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
