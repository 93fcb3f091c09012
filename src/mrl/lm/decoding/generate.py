"""Sampling text from a Matryoshka LM with a fixed head size or an adaptive per-token cascade.

Fixed size m: every next-token distribution comes from the head on h[:m] (m x V multiply-adds per
token). Adaptive (the paper's adaptive classification, Kusupati et al. 2022, section 4.2.1, applied
per token): start at the smallest head and move up while its max probability is below that size's
threshold; sample from the head that stopped. A tied (MRL-E) head adds one block
h[a:b] E[:, a:b]^T per step up, so stopping at m costs m x V; separate (MRL) heads pay for every
head run. Thresholds come from :func:`mrl.lm.evaluate.fit_adaptive` (adaptive.json).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mrl.errors import MRLError
from mrl.lm.model import MatryoshkaLM
from mrl.lm.tokenizer import LMTokenizer


@dataclass(frozen=True)
class Generation:
    """A sampled continuation.

    Attributes:
        text: prompt + continuation.
        new_ids: the sampled token ids.
        sizes: the head size that produced each sampled token.
        head_macs_per_token: mean output-head multiply-adds per sampled token.
    """

    text: str
    new_ids: list[int]
    sizes: list[int]
    head_macs_per_token: float


def parse_thresholds(values: Sequence[float | str], num_sizes: int) -> np.ndarray:
    """Thresholds [S-1] from JSON (``"inf"`` / ``"-inf"`` spelt as strings).

    Example:
        >>> parse_thresholds([0.5, "inf"], 3)
        array([0.5, inf])
    """
    try:
        thr = np.array([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise MRLError(f"thresholds must be numbers or 'inf'/'-inf', got {list(values)!r}") from None
    if thr.shape != (num_sizes - 1,) or np.isnan(thr).any():
        raise MRLError(f"need {num_sizes - 1} thresholds (one per size but the largest), got {list(values)!r}")
    return thr


def _next_logits(model: MatryoshkaLM, h: torch.Tensor, index: int | None, thresholds: np.ndarray | None) -> tuple[torch.Tensor, int, float]:
    """Logits [V] for the next token, the nesting index that produced them, and the head cost."""
    nesting, vocab = model.nesting, model.config.vocab_size
    if thresholds is None:
        index = len(nesting) - 1 if index is None else index
        m = nesting[index]
        # an FF model also projects d -> m before its head
        cost = m * vocab + (model.config.d_model * m if model.config.head == "ff" else 0)
        return model.logits_from_hidden(h, index), index, float(cost)
    tied = model.config.head == "mrl-e"
    partial, previous, cost = None, 0, 0.0
    for s, m in enumerate(nesting):
        if tied:
            block = model.head_block_logits(h, previous, m)
            partial = block if partial is None else partial + block
            logits = partial + model.head_bias[s]
            cost = float(m * vocab)
        else:
            logits = model.logits_from_hidden(h, s)
            cost += m * vocab
        previous = m
        if s == len(nesting) - 1 or torch.softmax(logits, -1).max().item() >= thresholds[s]:
            return logits, s, cost
    raise AssertionError("unreachable: the last size always answers")


@torch.no_grad()
def generate(
    model: MatryoshkaLM,
    tokenizer: LMTokenizer,
    prompt: str,
    max_new_tokens: int = 40,
    size: int | None = None,
    thresholds: Sequence[float] | np.ndarray | None = None,
    temperature: float = 0.8,
    top_k: int | None = 40,
    seed: int = 0,
    stop_at_end: bool = True,
) -> Generation:
    """Sample a continuation of ``prompt``.

    Args:
        model: the LM.
        tokenizer: its tokenizer.
        prompt: text; empty starts a new document. Characters the tokenizer cannot encode raise
            :class:`~mrl.errors.MRLError` (naming them).
        max_new_tokens: tokens to sample at most.
        size: fixed head size m (one of the model's nesting sizes); default the largest.
        thresholds: [S-1] adaptive thresholds (exclusive with ``size``).
        temperature: softmax temperature; 0 means greedy.
        top_k: sample among the k most likely tokens only (None: all).
        seed: sampling seed.
        stop_at_end: stop at the end-of-document token.

    Example:
        >>> from mrl.lm.model import LMConfig
        >>> tok = LMTokenizer.train(["a cat sat", "the dog ran"] * 20, vocab_size=40)
        >>> model = MatryoshkaLM(LMConfig(vocab_size=40, context=8, d_model=8, n_layers=1, n_heads=2,
        ...                               head="mrl-e", nesting=[4, 8]))
        >>> out = generate(model.eval(), tok, "a cat", max_new_tokens=5, thresholds=[0.5], stop_at_end=False)
        >>> len(out.new_ids), set(out.sizes) <= {4, 8}, out.text.startswith("a cat")
        (5, True, True)
    """
    if size is not None and thresholds is not None:
        raise MRLError("give either size (a fixed head) or thresholds (adaptive), not both")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise MRLError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if temperature < 0:
        raise MRLError(f"temperature must be >= 0, got {temperature}")
    index = None
    if size is not None:
        if size not in model.nesting:
            raise MRLError(f"size must be one of the model's head sizes {model.nesting}, got {size!r}")
        index = model.nesting.index(size)
    thr = None if thresholds is None else parse_thresholds(list(thresholds), len(model.nesting))
    prompt_ids = tokenizer.encode(prompt) if prompt else []
    ids = [tokenizer.eot_id, *prompt_ids]  # a prompt starts a document, as in training
    generator = torch.Generator().manual_seed(seed)
    model.eval()
    new_ids, sizes, costs = [], [], []
    for _ in range(max_new_tokens):
        context = torch.tensor([ids[-model.config.context :]])
        h = model.hidden(context)[0, -1]
        logits, used, cost = _next_logits(model, h, index, thr)
        if temperature == 0:
            token = int(logits.argmax())
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.numel():
                cutoff = torch.topk(logits, top_k).values[-1]
                logits = logits.masked_fill(logits < cutoff, float("-inf"))
            token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        ids.append(token)
        new_ids.append(token)
        sizes.append(model.nesting[used] if model.config.head != "ff" else model.nesting[0])
        costs.append(cost)
        if stop_at_end and token == tokenizer.eot_id:
            break
    text = prompt + tokenizer.decode([t for t in new_ids if not (stop_at_end and t == tokenizer.eot_id)])
    return Generation(text=text, new_ids=new_ids, sizes=sizes, head_macs_per_token=float(np.mean(costs)))
