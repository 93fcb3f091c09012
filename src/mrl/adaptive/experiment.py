"""One adaptive-classification study of a run directory: policies, protocol, front, plot, report.

Follows the MRL paper's adaptive classification (Kusupati et al., NeurIPS 2022, section 4.2.1,
Figure 6): thresholds fitted on random halves of the held-out split over seeds, measured on the
other half and on test; the oracle upper bound and the share wrong at every size; the whole
accuracy vs expected-dims front next to the fixed sizes of MRL and of FF baselines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mrl.adaptive.cascading import as_logits, max_softmax
from mrl.adaptive.classifier import AdaptiveClassifier, _check_labels
from mrl.adaptive.plot import plot_cost_accuracy
from mrl.adaptive.protocol import (
    bootstrap_fit,
    oracle_accuracy,
    pareto_curve,
    repeated_splits,
    share_wrong_at_every_size,
    thresholds_to_json,
)
from mrl.artifacts import new_artifact, prepare_output
from mrl.errors import MRLError
from mrl.io import atomic_write_text, load_npy, write_json
from mrl.runs import load_config, read_eval, read_run

GOAL_RATIO = 14  # the paper's headline: the largest size's accuracy at 1/14 of its dims


def load_run_logits(run_dir: str | Path) -> dict:
    """Nesting, d and per-split (confidences [S, N], correct [S, N], C) of a run with saved logits.

    Every file is verified against the run's manifest before it is read.
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    nesting = config.nesting
    out = {"nesting": nesting, "d": config.rep_dim}
    listed = read_run(run_dir, verify=[]).files
    for split in ("val", "test"):
        names = [f"logits_{split}.npy", f"labels_{split}.npy"]
        if any(name not in listed for name in names):
            raise MRLError(f"{run_dir} has no saved {split} logits for its current weights; "
                           f"run `mrl eval {run_dir} --save-logits` first")
        read_run(run_dir, verify=names)
        logits = as_logits(load_npy(run_dir / names[0]), name=names[0])
        if logits.shape[0] != len(nesting):
            raise MRLError(f"{run_dir / names[0]} holds {logits.shape[0]} sizes but config.json's nesting has {len(nesting)}")
        labels = _check_labels(load_npy(run_dir / names[1]), logits.shape[1], logits.shape[2])
        correct = logits.argmax(axis=-1) == labels[None, :]
        out[split] = (max_softmax(logits), correct.astype(np.float64))
        out["num_classes"] = int(logits.shape[2])
    return out


def load_ff_points(ff_runs: Sequence[str | Path]) -> dict[int, float]:
    """Size -> test top-1 of fixed-feature runs (their verified eval.json "top1"; one size per run)."""
    points: dict[int, float] = {}
    for run in ff_runs:
        for size, acc in read_eval(run)["top1"].items():
            points[int(size)] = float(acc)
    return dict(sorted(points.items()))


def run_adaptive(
    run_dir: str | Path,
    out: str | Path,
    policies: Sequence[str] = ("greedy", "budget"),
    costs: Sequence[str] = ("final", "cumulative"),
    target_drop: float = 0.002,
    confidence: float = 0.9,
    budget: float | None = None,
    seeds: int = 30,
    fit_fraction: float = 0.5,
    n_quantiles: int = 25,
    ff_runs: Sequence[str | Path] = (),
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Run the study and write OUT/adaptive.json, OUT/adaptive.png, OUT/report.md; return the JSON.

    OUT is an ``experiment`` artifact; ``overwrite`` replaces only such a folder, and never one
    that holds or lies inside ``run_dir`` or an FF run.
    """
    prepare_output(out, "experiment", overwrite, [run_dir, *ff_runs])  # refuse before the work
    data = load_run_logits(run_dir)
    ff = load_ff_points(ff_runs)
    nesting, num_classes = data["nesting"], data["num_classes"]
    result: dict = {
        "run_dir": str(run_dir),
        "nesting": nesting,
        "d": data["d"],
        "num_classes": num_classes,
        "n_val": int(data["val"][0].shape[1]),
        "n_test": int(data["test"][0].shape[1]),
        "settings": {"seeds": seeds, "fit_fraction": fit_fraction, "target_drop": target_drop,
                     "confidence": confidence, "budget": budget, "n_quantiles": n_quantiles},
        "fixed_sizes": {split: {str(m): float(a) for m, a in zip(nesting, data[split][1].mean(axis=1))}
                        for split in ("val", "test")},
        "oracle": {split: oracle_accuracy(data[split][1]) for split in ("val", "test")},
        "share_wrong_at_every_size": {split: share_wrong_at_every_size(data[split][1]) for split in ("val", "test")},
        "ff_test_top1": {str(m): a for m, a in ff.items()},
        "policies": {},
        "curves": {},
    }
    templates = {}
    if "greedy" in policies:
        templates["greedy"] = (AdaptiveClassifier(nesting, policy="greedy"), {})
    if "budget" in policies:
        for cost in costs:
            clf = AdaptiveClassifier(nesting, cost=cost, policy="budget", target_drop=target_drop,
                                     confidence=confidence, n_quantiles=n_quantiles)
            templates[f"budget-{cost}"] = (clf, {"budget": budget})
    for name, (clf, goal) in templates.items():
        res = repeated_splits(clf, data["val"], data["test"], num_classes, seeds=seeds, fit_fraction=fit_fraction,
                              progress=progress, **goal)
        res["all_val_fit"] = bootstrap_fit(clf, data["val"], data["test"], num_classes, resamples=seeds, **goal)
        res["minimises"] = None if clf.policy == "greedy" else clf.cost
        result["policies"][name] = res
    for cost in costs:
        result["curves"][cost] = pareto_curve(data["val"], data["test"], nesting, cost, num_classes, n_quantiles=n_quantiles)
    result["goal"] = _goal(result)
    inputs = [run_dir, *ff_runs]
    with new_artifact(out, "experiment", overwrite, inputs, meta={"command": "adaptive"}) as tmp:
        write_json(tmp / "adaptive.json", result)
        _plot(tmp / "adaptive.png", result, ff)
        atomic_write_text(tmp / "report.md", report_markdown(result))
    return result


def _goal(result: dict) -> dict:
    """The issue's goal: the largest size's test accuracy within 0.2 points at <= d/14 expected dims."""
    largest = result["fixed_sizes"]["test"][str(result["nesting"][-1])]
    limit = result["d"] / GOAL_RATIO
    goal = {"largest_test_accuracy": largest, "dims_limit": limit, "policies": {}}
    for name, res in result["policies"].items():
        acc, dims = res["test"]["accuracy"]["mean"], res["test"]["expected_dims"]["mean"]
        goal["policies"][name] = {"test_accuracy": acc, "expected_dims": dims,
                                  "met": bool(acc >= largest - 0.002 - 1e-12 and dims <= limit)}
    if "final" in result["curves"]:
        curve = result["curves"]["final"]
        ok = [(d, a) for d, a in zip(curve["test_dims"], curve["test_accuracy"]) if a >= largest - 0.002 - 1e-12]
        # read off the test curve itself: how cheap the goal can be, not a held-out estimate
        goal["cheapest_front_point_on_test"] = {"expected_dims": min(ok)[0], "test_accuracy": min(ok)[1]} if ok else None
    return goal


def _plot(path: Path, result: dict, ff: dict[int, float]) -> None:
    curves = {}
    for cost, curve in result["curves"].items():
        x = curve["test_cumulative_dims"] if cost == "cumulative" else curve["test_dims"]
        if cost != "flops":
            curves[f"MRL cascade front, {cost} dims (test)"] = (x, curve["test_accuracy"])
    points = {"MRL fixed sizes": (result["nesting"], [result["fixed_sizes"]["test"][str(m)] for m in result["nesting"]])}
    if ff:
        points["FF"] = (list(ff), list(ff.values()))
    for name, res in result["policies"].items():
        cumulative = name.endswith("cumulative")
        dims = res["test"]["expected_cumulative_dims" if cumulative else "expected_dims"]["mean"]
        points[f"{name} ({'cumulative' if cumulative else 'final'} dims, test)"] = ([dims], [res["test"]["accuracy"]["mean"]])
    plot_cost_accuracy(path, curves, points, oracle=result["oracle"]["test"],
                       title=f"Adaptive classification, {Path(result['run_dir']).name} (d={result['d']})")


def _pm(stat: dict, scale: float = 100.0, digits: int = 2) -> str:
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def _nearest_ff(ff: dict[str, float], dims: float) -> str:
    if not ff:
        return "–"
    size = min(ff, key=lambda m: abs(math.log2(int(m)) - math.log2(max(dims, 1e-9))))
    return f"FF-{size}: {100 * ff[size]:.2f}"


def certification_text(res: dict) -> str:
    """"yes"/"no" for the all-val fit, with how many half-splits and bootstrap refits certified the target."""
    fit = res["all_val_fit"]
    if fit["certified"] is None:
        return "– (no target)"
    return (f"{'yes' if fit['certified'] else 'no'} (halves {res['certified_seeds']}/{res['seeds']}, "
            f"bootstrap {fit['bootstrap']['certified_resamples']}/{fit['bootstrap']['resamples']})")


def report_markdown(result: dict) -> str:
    """The report.md text: policy table, fixed sizes, oracle, goal."""
    s = result["settings"]
    lines = [
        f"# Adaptive classification: {result['run_dir']}",
        "",
        f"Thresholds fitted on a random {s['fit_fraction']:.0%} of val ({result['n_val']} samples), measured on the "
        f"rest and on test ({result['n_test']}); {s['seeds']} seeds, mean ± std. Budget target: largest size's "
        f"fit accuracy minus {100 * s['target_drop']:.2f} points, held at a {s['confidence']:.0%} lower "
        f"confidence bound; {s['n_quantiles']} candidate thresholds per size"
        + (f"; budget {s['budget']}" if s["budget"] is not None else "") + ".",
        "",
        "| policy | minimises | expected dims (final) | expected dims (cumulative) | accuracy, rest of val | "
        "accuracy, test | FF at nearest size |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for name, res in result["policies"].items():
        t, h = res["test"], res["heldout"]
        lines.append(
            f"| {name} | {res['minimises'] or '–'} | {_pm(t['expected_dims'], 1, 1)} | "
            f"{_pm(t['expected_cumulative_dims'], 1, 1)} | {_pm(h['accuracy'])} | {_pm(t['accuracy'])} | "
            f"{_nearest_ff(result['ff_test_top1'], t['expected_dims']['mean'])} |"
        )
    lines += ["", f"Fitted on all of val ({result['n_val']} samples); spread from {s['seeds']} bootstrap refits "
              "(val drawn with replacement), measured on test:", "",
              "| policy | target certified | expected dims (final) | accuracy, test | bootstrap: dims | "
              "bootstrap: accuracy, test |", "|---|---|---:|---:|---:|---:|"]
    for name, res in result["policies"].items():
        fit, boot = res["all_val_fit"], res["all_val_fit"]["bootstrap"]
        lines.append(f"| {name} | {certification_text(res)} | {fit['test']['expected_dims']:.1f} | "
                     f"{100 * fit['test']['accuracy']:.2f} | {_pm(boot['test']['expected_dims'], 1, 1)} | "
                     f"{_pm(boot['test']['accuracy'])} |")
    uncertified = [name for name, res in result["policies"].items() if res["all_val_fit"]["certified"] is False]
    if uncertified:
        lines += ["", f"**Target not certified** for {', '.join(uncertified)}: no cheaper cascade reaches it with "
                  f"the {s['confidence']:.0%} margin on this val set, so the largest size answers every sample "
                  "(safe on new data, no saving)."]
    lines += ["", "Fixed sizes (top-1, %):", "", "| m | MRL val | MRL test | FF test |", "|---:|---:|---:|---:|"]
    sizes = sorted({*map(int, result["fixed_sizes"]["test"]), *map(int, result["ff_test_top1"])})
    for m in sizes:
        cells = [result["fixed_sizes"]["val"].get(str(m)), result["fixed_sizes"]["test"].get(str(m)),
                 result["ff_test_top1"].get(str(m))]
        lines.append(f"| {m} | " + " | ".join("–" if c is None else f"{100 * c:.2f}" for c in cells) + " |")
    g = result["goal"]
    lines += [
        "",
        f"Oracle (right at some size): val {100 * result['oracle']['val']:.2f}, test {100 * result['oracle']['test']:.2f}. "
        f"Wrong at every size: val {100 * result['share_wrong_at_every_size']['val']:.2f}, "
        f"test {100 * result['share_wrong_at_every_size']['test']:.2f}.",
        "",
        f"Goal: test accuracy >= {100 * g['largest_test_accuracy']:.2f} - 0.2 (largest size) at expected dims "
        f"<= d/{GOAL_RATIO} = {g['dims_limit']:.1f}.",
    ]
    for name, v in g["policies"].items():
        lines.append(f"- {name}: {100 * v['test_accuracy']:.2f} at {v['expected_dims']:.1f} dims: "
                     f"{'met' if v['met'] else 'not met'}")
    cheapest = g.get("cheapest_front_point_on_test")
    if cheapest:
        lines.append(f"- front fitted on all val, read on test: {100 * cheapest['test_accuracy']:.2f} at "
                     f"{cheapest['expected_dims']:.1f} expected dims (chosen with test labels: a bound, not a result)")
    return "\n".join(lines) + "\n"
