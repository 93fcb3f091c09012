"""Nested widths (MatFormer) x Matryoshka dims: each submodel vs a model trained at its width alone.

Classification (Fashion-MNIST, MLP backbone): one run trained with ``--widths`` (every width's
Matryoshka loss summed per step) against one run per width trained alone (same recipe, same
epochs, hidden layers of round(w * 512) units), compared at every (width, dim) on test top-1 and
1-NN; then the (width, dim) cascade of :class:`mrl.adaptive.WidthDimCascade`, fitted on val,
measured on test: its cost-accuracy curve and the budget policy's point (full-model accuracy -
0.2 points). WordNet LM: one LM trained with FFN widths against one LM per width trained alone
(FFN of round(w * 4d) units), validation perplexity per (width, head size). The plain MLP
(BatchNorm, no widths) is trained too, as the reference the nested recipe (LayerNorm) departs from.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/widths.py --out runs/widths

The defaults are the demo setting (all of Fashion-MNIST, 512-512 -> 2048, 10 epochs) and the LM
benchmark's (d=128, 2 layers, 400 steps); ``--max-train``, ``--epochs``, ``--rep-dim`` and
``--lm-steps`` make a smaller proxy. Each phase skips the runs already done, so an interrupted
benchmark picks up where it stopped. Writes OUT/results.json and OUT/table.md.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from mrl.adaptive import WidthDimCascade, max_softmax, pareto_curve
from mrl.config import TrainConfig
from mrl.data import load_dataset
from mrl.experiments import run_or_reuse
from mrl.io import atomic_write_text, load_npy, read_json, write_json
from mrl.models.widths import parse_widths, units_at
from mrl.runs import read_run

MLP_HIDDEN = 512


def classify_runs(args) -> dict[str, TrainConfig]:
    common = dict(data=args.data, data_dir=args.data_dir, arch="mlp", rep_dim=args.rep_dim, epochs=args.epochs,
                  max_train=args.max_train, seed=args.seed)
    runs = {"nested": TrainConfig(widths=args.widths, **common)}
    for w in args.widths:
        runs[f"alone-{w}"] = TrainConfig(widths=[1.0], hidden=[units_at(MLP_HIDDEN, w)] * 2, **common)
    runs["plain"] = TrainConfig(**common)  # today's MLP (BatchNorm), the recipe the nested one departs from
    return runs


def run_classification(args) -> dict:
    root = args.out / "classify"
    data = load_dataset(args.data, args.data_dir, args.max_train)
    results = {
        name: run_or_reuse(config, root / name, data=data, progress=False, save_logits=name == "nested")
        for name, config in classify_runs(args).items()
    }
    grid = results["nested"]["grid"]
    nesting = grid["nesting"]
    comparison = {}
    for w in args.widths:
        alone = results[f"alone-{w}"]
        comparison[str(w)] = {
            key: {str(m): grid[key][str(w)][str(m)] - alone[key][str(m)] for m in nesting} for key in ("top1", "knn1")
        }
    return {"grid": grid, "alone": {str(w): results[f"alone-{w}"] for w in args.widths}, "plain": results["plain"],
            "nested_minus_alone": comparison, "cascade": cascade_curve(root / "nested", grid)}


def cascade_curve(run_dir: Path, grid: dict) -> dict:
    widths, nesting = grid["widths"], grid["nesting"]
    flops = np.array([[grid["flops"][str(w)][str(m)] for m in nesting] for w in widths])
    names = [f"{kind}_{s}.npy" for kind in ("logits_widths", "labels") for s in ("val", "test")]
    read_run(run_dir, verify=names)
    logits = {s: load_npy(run_dir / f"logits_widths_{s}.npy") for s in ("val", "test")}
    labels = {s: load_npy(run_dir / f"labels_{s}.npy") for s in ("val", "test")}
    casc = WidthDimCascade(widths, nesting, flops, policy="budget", target_drop=0.002).fit(logits["val"], labels["val"])
    chosen = casc.evaluate(logits["test"], labels["test"])
    arrays = {}
    for s in ("val", "test"):
        stages = logits[s].reshape(-1, *logits[s].shape[2:])[casc.stages_]
        arrays[s] = (max_softmax(stages), (stages.argmax(-1) == labels[s][None]).astype(np.float64))
    curve = pareto_curve(arrays["val"], arrays["test"], casc.flops_.astype(np.int64).tolist(), cost="cumulative")
    full_flops = float(flops[-1, -1])
    full_accuracy = grid["top1"][str(widths[-1])][str(nesting[-1])]
    points = [{"flops": f, "flops_fraction": f / full_flops, "test_top1": a}
              for f, a in zip(curve["test_cumulative_dims"], curve["test_accuracy"])]
    reaching = [p for p in points if p["test_top1"] >= full_accuracy - 0.002]
    return {
        "stages": [f"{w}x{m}" for w, m in casc.pairs_],
        "full_top1": full_accuracy,
        "full_flops": full_flops,
        "budget_policy": {**chosen, "flops_fraction": chosen["expected_flops"] / full_flops},
        "cheapest_within_0.2_points": min(reaching, key=lambda p: p["flops"]) if reaching else None,
        "curve": points,
    }


def run_lm(args) -> dict:
    from mrl.lm.evaluate import evaluate_run as lm_evaluate
    from mrl.lm.model import LMConfig
    from mrl.lm.train import TrainConfig as LMTrainConfig
    from mrl.lm.train import prepare_run
    from mrl.lm.train import train as lm_train

    root = args.out / "lm"
    shape = dict(vocab_size=args.vocab_size, context=64, d_model=args.d_model, n_layers=args.layers, n_heads=4,
                 nesting=[int(v) for v in args.lm_nesting.split(",")])
    runs = {"nested": LMConfig(widths=args.lm_widths, **shape)}
    runs.update({f"alone-{w}": LMConfig(ffn_hidden=units_at(4 * args.d_model, w), **shape) for w in args.lm_widths})
    first = None
    results = {}
    for name, config in runs.items():
        run_dir = root / name
        if not (run_dir / "config.json").exists():
            prepare_run(run_dir, "wordnet", config, LMTrainConfig(steps=args.lm_steps, seed=args.seed), tokens_from=first)
        first = first or run_dir
        if not (run_dir / "model.safetensors").exists():
            lm_train(run_dir, resume=True, progress=False)
        if not (run_dir / "eval.json").exists():
            lm_evaluate(run_dir, max_tokens=args.lm_max_tokens, progress=False)
        results[name] = read_json(run_dir / "eval.json")
    per_width = results["nested"]["widths"]
    ratio = {
        str(w): {m: per_width[str(w)]["ppl"][m] / results[f"alone-{w}"]["ppl"][m] for m in per_width[str(w)]["ppl"]}
        for w in args.lm_widths
    }
    return {"nested": per_width, "alone": {str(w): results[f"alone-{w}"]["ppl"] for w in args.lm_widths},
            "ppl_ratio_nested_over_alone": ratio}


def table(results: dict) -> str:
    lines = []
    if "classify" in results:
        c = results["classify"]
        grid = c["grid"]
        d = str(grid["nesting"][-1])
        lines += ["| width | FLOPs/example | top-1 nested | top-1 alone | diff (pts) | worst diff over dims | "
                  "1-NN nested | 1-NN alone | diff (pts) |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for w in grid["widths"]:
            w = str(w)
            alone = c["alone"][w]
            diffs = c["nested_minus_alone"][w]
            lines.append(
                f"| {w} | {grid['flops'][w][d]:,} | {100 * grid['top1'][w][d]:.2f} | {100 * alone['top1'][d]:.2f} | "
                f"{100 * diffs['top1'][d]:+.2f} | {100 * min(diffs['top1'].values()):+.2f} | "
                f"{100 * grid['knn1'][w][d]:.2f} | {100 * alone['knn1'][d]:.2f} | {100 * diffs['knn1'][d]:+.2f} |"
            )
        lines += ["", "Nested top-1 per (width, dim):", "", "| m | " + " | ".join(f"w={w}" for w in grid["widths"]) + " |",
                  "|---:|" + "---:|" * len(grid["widths"])]
        for m in grid["nesting"]:
            lines.append(f"| {m} | " + " | ".join(f"{100 * grid['top1'][str(w)][str(m)]:.2f}" for w in grid["widths"]) + " |")
        plain = c["plain"]
        lines += ["", f"Reference, the plain MLP (BatchNorm, no widths): top-1 {100 * plain['top1'][d]:.2f}, "
                  f"1-NN {100 * plain['knn1'][d]:.2f} at d={d}"]
        casc = c["cascade"]
        b = casc["budget_policy"]
        lines += ["", f"Full model test top-1 {100 * casc['full_top1']:.2f} at {casc['full_flops']:,.0f} FLOPs/example; "
                  f"cascade stages {casc['stages']}",
                  f"Budget policy (fit on val, target full - 0.2 pts): test top-1 {100 * b['accuracy']:.2f} at "
                  f"{b['flops_fraction']:.3f} of the full FLOPs"]
        best = casc["cheapest_within_0.2_points"]
        if best:
            lines.append(f"Cheapest curve point within 0.2 pts on test: top-1 {100 * best['test_top1']:.2f} at "
                         f"{best['flops_fraction']:.3f} of the full FLOPs")
        lines += ["", "| FLOPs fraction | test top-1 |", "|---:|---:|"]
        shown = np.unique(np.linspace(0, len(casc["curve"]) - 1, 15).round().astype(int))  # all of it: results.json
        lines += [f"| {casc['curve'][i]['flops_fraction']:.3f} | {100 * casc['curve'][i]['test_top1']:.2f} |" for i in shown]
    if "lm" in results:
        lm = results["lm"]
        sizes = list(next(iter(lm["alone"].values())))
        lines += ["", "WordNet LM validation perplexity, nested / alone (ratio):", "",
                  "| width | " + " | ".join(f"head {m}" for m in sizes) + " |", "|---:|" + "---:|" * len(sizes)]
        for w, ratio in lm["ppl_ratio_nested_over_alone"].items():
            cells = [f"{lm['nested'][w]['ppl'][m]:.2f} / {lm['alone'][w][m]:.2f} ({ratio[m]:.3f})" for m in sizes]
            lines.append(f"| {w} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/widths"))
    parser.add_argument("--part", choices=["classify", "lm", "all"], default="all")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--widths", default="0.125,0.25,0.5,1")
    parser.add_argument("--rep-dim", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lm-widths", default="0.25,0.5,1")
    parser.add_argument("--lm-nesting", default="8,16,32,64,128")
    parser.add_argument("--lm-steps", type=int, default=400)
    parser.add_argument("--lm-max-tokens", type=int, default=50_000, help="validation tokens scored per model")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    args.widths = parse_widths(args.widths)
    args.lm_widths = parse_widths(args.lm_widths)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    # parts run separately accumulate in one results.json
    results = read_json(args.out / "results.json") if (args.out / "results.json").exists() else {}
    results[f"args_{args.part}"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    if args.part in ("classify", "all"):
        results["classify"] = run_classification(args)
    if args.part in ("lm", "all"):
        results["lm"] = run_lm(args)
    write_json(args.out / "results.json", results)
    text = table(results)
    atomic_write_text(args.out / "table.md", text)
    print(text)
    print(json.dumps(results.get("classify", {}).get("cascade", {}).get("budget_policy", {}), indent=1))


if __name__ == "__main__":
    main()
