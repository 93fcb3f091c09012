"""Per-size evaluation of a Matryoshka LM and its adaptive-decoding thresholds.

Perplexity and next-token top-1 at every nesting size (the LM analogue of the paper's per-size
top-1, Kusupati et al. 2022, section 4.1) on the validation stream, cut into non-overlapping
windows of ``context + 1`` tokens so that every validation token is predicted once.

Full logits [S, N, V] of all validation tokens would not fit in memory (5 x 170k x 2048 floats is
7 GB), so :func:`token_stats` keeps three numbers per size and token: the max probability (the
cascade's confidence), the NLL of the target, and whether the argmax is the target.

Adaptive decoding (the paper's adaptive classification, section 4.2.1, per token): start at the
smallest head and move up while the max probability is below that size's threshold. Thresholds
are learned with the shared :func:`mrl.adaptive.budget_thresholds` on the first half of the
validation windows (utility = -NLL, target: at most ``tolerance`` higher perplexity than the full
head there) and reported on the second half.

Output-head cost per token, in multiply-adds of the head's matrix products (softmax exps for the
confidence, V per consulted size, are not counted): a tied (MRL-E) cascade that stops at size m
has computed h[:m] E[:, :m]^T block by block, m x V in all, whatever it consulted on the way
(``head_costs(.., "final")`` x V); separate (MRL) heads pay m_j x V for every head run
(``head_costs(.., "flops", V)``). The full head costs d x V.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from mrl.adaptive import HeadCosts, budget_thresholds, cascade_outcome, head_costs, thresholds_to_json
from mrl.artifacts import lock
from mrl.errors import MRLError
from mrl.io import load_npy, load_npz, read_json, save_npz, write_json
from mrl.lm.model import MatryoshkaLM
from mrl.lm.train import OUTPUTS, load_model, read_lm_run, read_run_config, record_files
from mrl.models.widths import WidthSpec
from mrl.validation import check_float, check_int


def windows_of(ids: torch.Tensor, context: int, max_tokens: int | None = None) -> torch.Tensor:
    """Non-overlapping windows [W, context + 1] of an id stream (the last window shares one token
    with the next: window w covers ids[w*T : w*T + T + 1]).

    Example:
        >>> windows_of(torch.arange(10), 3).tolist()
        [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    """
    n_windows = (ids.numel() - 1) // context
    if max_tokens is not None:
        n_windows = min(n_windows, max(1, max_tokens // context))
    if n_windows < 1:
        raise MRLError(f"the stream has {ids.numel()} tokens, fewer than context + 1 = {context + 1}")
    return torch.stack([ids[w * context : w * context + context + 1] for w in range(n_windows)]).long()


@torch.no_grad()
def token_stats(
    model: MatryoshkaLM, windows: torch.Tensor, batch_size: int = 32, progress: bool = False, width: WidthSpec = None
) -> dict[str, np.ndarray]:
    """Max probability, target NLL and top-1 hit per size and predicted token.

    Args:
        model: the LM.
        windows: [W, T + 1] id windows (inputs are [:, :-1], targets [:, 1:]).
        batch_size: windows per forward pass.
        width: the FFN width to run (see :class:`~mrl.lm.model.MatryoshkaLM`); None is the full model.

    Returns:
        ``maxprob`` float32 [G, N], ``nll`` float32 [G, N] (nats), ``correct`` bool [G, N], with
        N = W x T in window order.

    Example:
        >>> from mrl.lm.model import LMConfig
        >>> model = MatryoshkaLM(LMConfig(vocab_size=30, context=4, d_model=8, n_layers=1, n_heads=2, nesting=[4, 8]))
        >>> stats = token_stats(model.eval(), torch.randint(0, 30, (3, 5)))
        >>> stats["nll"].shape, bool((stats["maxprob"] <= 1).all())
        ((2, 12), True)
    """
    model.eval()
    out: dict[str, list[np.ndarray]] = {"maxprob": [], "nll": [], "correct": []}
    for start in tqdm(range(0, len(windows), batch_size), desc="eval", disable=not progress):
        chunk = windows[start : start + batch_size]
        targets = chunk[:, 1:].reshape(-1)
        logp = torch.log_softmax(model(chunk[:, :-1], width).flatten(1, 2).float(), dim=-1)  # [G, B*T, V]
        top, arg = logp.max(dim=-1)
        out["maxprob"].append(top.exp().numpy())
        out["nll"].append((-logp.gather(-1, targets.expand(logp.shape[0], -1).unsqueeze(-1)).squeeze(-1)).numpy())
        out["correct"].append((arg == targets).numpy())
    return {k: np.concatenate(v, axis=1) for k, v in out.items()}


def summarize(stats: dict[str, np.ndarray], nesting: list[int]) -> dict:
    """Per-size perplexity, mean NLL and top-1 (keys are sizes as strings)."""
    nll = stats["nll"].astype(np.float64).mean(axis=1)
    return {
        "nesting": list(nesting),
        "tokens": int(stats["nll"].shape[1]),
        "ppl": {str(m): float(math.exp(v)) for m, v in zip(nesting, nll)},
        "nll": {str(m): float(v) for m, v in zip(nesting, nll)},
        "top1": {str(m): float(v) for m, v in zip(nesting, stats["correct"].mean(axis=1))},
    }


def evaluate_run(run_dir: str | os.PathLike, batch_size: int = 32, max_tokens: int | None = None, progress: bool = True,
                 for_adaptive: bool = False) -> dict:
    """Evaluate a trained run on its validation stream; writes eval.json and token_stats.npz.

    ``for_adaptive`` (:func:`fit_adaptive` follows): for a model with several head sizes, refuse
    before anything is written a stream (or ``max_tokens``) giving fewer than 2 windows of
    ``context`` tokens, one to fit the thresholds on and one to report.

    Returns:
        The summary of :func:`summarize` plus ``head``, ``vocab_size`` and ``trunk_flops``
        (multiply-adds per token of the blocks, :meth:`~mrl.lm.model.MatryoshkaLM.trunk_flops`); for
        a model with ``widths``, ``widths`` maps each width to its own :func:`summarize` and
        ``trunk_flops`` (token_stats.npz and the top-level numbers stay those of the full model).
    """
    run_dir = Path(run_dir)
    if max_tokens is not None:
        check_int("max_tokens", max_tokens, min=1)
    check_int("batch_size", batch_size, min=1)
    read_lm_run(run_dir, verify=[])  # a missing or foreign folder is refused before the lock creates anything
    with lock(run_dir):
        model = load_model(run_dir)
        read_lm_run(run_dir, verify=["tokens_val.npy"])
        ids = torch.from_numpy(load_npy(run_dir / "tokens_val.npy").astype(np.int64))
        windows = windows_of(ids, model.config.context, max_tokens)
        min_windows = 2 if for_adaptive and len(model.nesting) > 1 else 1
        if len(windows) < min_windows:
            raise MRLError(f"{len(windows)} window(s) of {model.config.context} validation tokens, fewer than {min_windows}: adaptive "
                           f"decoding fits its thresholds on one half and reports the other; raise --max-tokens to at least "
                           f"{min_windows * model.config.context} (the run's files are unchanged)")
        stats = token_stats(model, windows, batch_size, progress)
        summary = {"head": model.config.head, "vocab_size": model.config.vocab_size, "d_model": model.config.d_model}
        summary.update(summarize(stats, model.nesting))
        summary["trunk_flops"] = model.trunk_flops()
        if model.config.widths is not None:
            summary["widths"] = {
                str(w): {
                    **summarize(stats if w == 1.0 else token_stats(model, windows, batch_size, progress, w), model.nesting),
                    "trunk_flops": model.trunk_flops(w),
                }
                for w in model.config.widths
            }
        record_files(run_dir, drop=OUTPUTS)  # the old outputs leave the manifest before they are replaced
        save_npz(run_dir / "token_stats.npz", **stats)
        write_json(run_dir / "eval.json", summary)
        record_files(run_dir, add=["token_stats.npz", "eval.json"])
    return summary


def decoding_costs(nesting: list[int], vocab_size: int, tied: bool) -> HeadCosts:
    """Head multiply-adds per token of a cascade answering at each size (see the module doc).

    Example:
        >>> decoding_costs([8, 16], 10, tied=True).per_answer(np.array([0.5]))
        array([ 80., 160.])
        >>> decoding_costs([8, 16], 10, tied=False).per_answer(np.array([0.5]))
        array([ 80., 240.])
    """
    if tied:
        final = head_costs(nesting, "final")
        return HeadCosts(answer=final.answer * vocab_size, consult=final.consult)
    return head_costs(nesting, "flops", num_classes=vocab_size)


def _outcome(stats: dict[str, np.ndarray], thresholds: np.ndarray, costs: HeadCosts, full_cost: float) -> dict:
    out = cascade_outcome(stats["maxprob"], -stats["nll"].astype(np.float64), thresholds, costs)
    cols = np.arange(out.chosen.size)
    nll = float(-out.mean_utility)
    return {
        "ppl": math.exp(nll),
        "top1": float(stats["correct"][out.chosen, cols].mean()),
        "head_macs_per_token": out.mean_cost,
        "flops_reduction": full_cost / out.mean_cost,
        "share_per_size": (np.bincount(out.chosen, minlength=stats["nll"].shape[0]) / out.chosen.size).tolist(),
    }


def fit_adaptive(run_dir: str | os.PathLike, tolerance: float = 0.01, n_quantiles: int = 50) -> dict:
    """Learn adaptive-decoding thresholds on half the validation tokens, report the other half.

    Needs :func:`evaluate_run` first (reads token_stats.npz). Writes adaptive.json.

    Args:
        run_dir: an MRL or MRL-E run.
        tolerance: allowed relative perplexity increase over the full head (on the fit half).
        n_quantiles: candidate thresholds per size for the search.

    Returns:
        ``thresholds`` [S-1], ``chosen`` (the fitted point on the test half), ``curve`` (the Pareto
        front's points on the test half), ``fixed`` (each single size on the test half), ``full``.
    """
    run_dir = Path(run_dir)
    tolerance = check_float("tolerance", tolerance, min=0)
    n_quantiles = check_int("n_quantiles", n_quantiles, min=1, max=100_000)
    config = read_run_config(run_dir)["model"]
    nesting, vocab = config["nesting"], config["vocab_size"]
    if len(nesting) < 2:
        raise MRLError(f"adaptive decoding needs a model with several head sizes; {run_dir} has nesting {nesting}")
    if "token_stats.npz" not in read_lm_run(run_dir, verify=[]).files:
        raise MRLError(f"{run_dir} has no token statistics of its current weights; run `mrl lm eval {run_dir}` first")
    read_lm_run(run_dir, verify=["token_stats.npz"])
    stats = load_npz(run_dir / "token_stats.npz", required=("maxprob", "nll", "correct"))
    n = stats["nll"].shape[1]
    # Split on a window boundary so fit and test tokens come from different documents' spans.
    context = config["context"]
    half = (n // context // 2) * context
    if half == 0:
        raise MRLError(f"{run_dir}'s token statistics hold {n} tokens, less than two windows of {context}: nothing to fit "
                       f"thresholds on and report; run `mrl lm eval` with more --max-tokens")
    fit = {k: v[:, :half] for k, v in stats.items()}
    test = {k: v[:, half:] for k, v in stats.items()}
    costs = decoding_costs(nesting, vocab, tied=config["head"] == "mrl-e")
    full_cost = float(nesting[-1] * vocab)
    full_fit_nll = float(fit["nll"][-1].astype(np.float64).mean())
    target = -(full_fit_nll + math.log1p(tolerance))
    thresholds, sweep = budget_thresholds(fit["maxprob"], -fit["nll"].astype(np.float64), costs, min_utility=target, n_quantiles=n_quantiles)
    result = {
        "head": config["head"],
        "tolerance": tolerance,
        "fit_tokens": half,
        "test_tokens": n - half,
        "full_head_macs_per_token": full_cost,
        "thresholds": thresholds_to_json(thresholds),
        "chosen": _outcome(test, thresholds, costs, full_cost),
        "curve": [_outcome(test, thr, costs, full_cost) for thr in sweep.thresholds],
        "fixed": {
            str(m): {
                "ppl": math.exp(float(test["nll"][g].astype(np.float64).mean())),
                "top1": float(test["correct"][g].mean()),
                "head_macs_per_token": float(m * vocab),
            }
            for g, m in enumerate(nesting)
        },
    }
    result["full"] = result["fixed"][str(nesting[-1])]
    result["chosen"]["ppl_increase"] = result["chosen"]["ppl"] / result["full"]["ppl"] - 1
    with lock(run_dir):
        record_files(run_dir, drop=["adaptive.json"])
        write_json(run_dir / "adaptive.json", result)
        record_files(run_dir, add=["adaptive.json"])
    return result


def read_thresholds(run_dir: str | os.PathLike) -> list:
    """The adaptive-decoding thresholds of a run's adaptive.json, verified and type-checked."""
    run_dir = Path(run_dir)
    if "adaptive.json" not in read_lm_run(run_dir, verify=[]).files:
        raise MRLError(f"{run_dir} has no adaptive.json; run `mrl lm eval {run_dir}` first")
    read_lm_run(run_dir, verify=["adaptive.json"])
    data = read_json(run_dir / "adaptive.json")
    thresholds = data.get("thresholds") if isinstance(data, dict) else None
    if not isinstance(thresholds, list) or not all(isinstance(t, (int, float, str)) and not isinstance(t, bool) for t in thresholds):
        raise MRLError(f"{run_dir / 'adaptive.json'} has no list of 'thresholds'")
    return thresholds
