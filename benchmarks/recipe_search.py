"""Which recipe lets one MRL model match FF at every size? Measures candidates side by side.

Every variant trains MRL, MRL-E and FF-m (m in --ff-dims) with the same settings through
:func:`mrl.training.train` (same loop, same data, same seeds) and reports, mean ± std over seeds:
test top-1 per size from each model's own heads, cosine 1-NN, and the share of test examples whose
m-dim prefix is all zero (a zero prefix has no direction, so cosine 1-NN cannot use it).

    .venv/bin/python benchmarks/recipe_search.py --out runs/recipe --variants paper,linear-rep \\
        --seeds 0,1,2 --epochs 10

One search per --out at a time (the folder is locked while it runs); run variants in parallel with
separate --out folders (FF runs are then trained once per folder).

``--max-train`` and fewer ``--epochs`` give the cheap proxies used to rank candidates first.
Runs are reused when present (``mrl.experiments.run_or_reuse``), so an interrupted search resumes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from mrl.compare import aggregate
from mrl.config import TrainConfig
from mrl.data import load_dataset
from mrl.evaluation import embed, load_run, per_size
from mrl.experiments import claim_folder, run_or_reuse, run_status
from mrl.nesting import parse_nesting
from mrl.report import markdown_table

# Each variant is a set of TrainConfig overrides, each naming its representation activation (the
# default changed to "none" after this search); "paper" is the method as published (ReLU features,
# c_m = 1, one learning rate).
VARIANTS: dict[str, dict] = {
    "paper": {"rep_activation": "relu"},
    "linear-rep": {"rep_activation": "none"},
    "head-lr-x4": {"rep_activation": "relu", "head_lr_scale": 4.0},
    "linear-rep-head-lr-x4": {"rep_activation": "none", "head_lr_scale": 4.0},
    "weights-large": {"rep_activation": "relu", "loss_weights": "large"},
    "linear-rep-weights-large": {"rep_activation": "none", "loss_weights": "large"},
    "linear-rep-weights-small": {"rep_activation": "none", "loss_weights": "small"},
}


def weights_for(kind: str, nesting: list[int]) -> list[float]:
    """c_m schemes (sum = G, as all-ones): ``large`` grows with log2 m so the full-size head weighs
    most; ``small`` is its mirror image, the smallest head weighing most."""
    steps = np.log2(np.asarray(nesting, dtype=np.float64)) - np.log2(nesting[0]) + 1.0
    raw = {"large": steps, "small": steps[::-1]}[kind]
    return (raw / raw.sum() * len(nesting)).tolist()


def zero_prefix_share(z: np.ndarray, nesting: list[int]) -> dict[int, float]:
    """Share of rows of z [N, d] whose first m coordinates are all exactly zero, per m."""
    return {m: float((np.abs(z[:, :m]).max(axis=1) == 0).mean()) for m in nesting}


def ff_folder(ff_overrides: dict) -> str:
    """FF runs depend only on the overrides that reach an FF model, so variants share them."""
    return "ff" + "".join(f"_{k}={v}" for k, v in sorted(ff_overrides.items()))


def variant_runs(name: str, seeds: list[int], methods: list[str], ff_sizes: list[int], common: dict, rep_dim: int):
    """(run folder relative to --out, config) for every run of a variant, seeds outermost."""
    extra = dict(VARIANTS[name])
    nesting = parse_nesting(None, rep_dim)
    if isinstance(extra.get("loss_weights"), str):
        extra["loss_weights"] = weights_for(extra["loss_weights"], nesting)
    ff_extra = {k: v for k, v in extra.items() if k != "loss_weights"}
    runs = []
    for seed in seeds:
        for mode in ("mrl", "mrl-e"):
            if mode in methods:
                runs.append((f"{name}/seed-{seed}/{mode}", TrainConfig(mode=mode, rep_dim=rep_dim, seed=seed, **common, **extra)))
        for m in ff_sizes:
            runs.append((f"{ff_folder(ff_extra)}/seed-{seed}/ff-{m}",
                         TrainConfig(mode="ff", ff_dim=m, seed=seed, **common, **ff_extra)))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", default="paper,linear-rep")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--ff-dims", default="8,32,2048")
    parser.add_argument("--methods", default="mrl,mrl-e,ff", help="what to train; FF runs already there are reported anyway")
    parser.add_argument("--rep-dim", type=int, default=2048)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = args.methods.split(",")
    ff_sizes = parse_nesting(args.ff_dims, args.rep_dim)
    data = load_dataset("fashion-mnist", None, args.max_train)
    common = dict(arch="mlp", epochs=args.epochs, max_train=args.max_train)
    with claim_folder(args.out, "recipe-search"):  # locked: one search per --out at a time
        for name in args.variants.split(","):
            report_variant(name, args, seeds, methods, ff_sizes, common, data)


def report_variant(name: str, args: argparse.Namespace, seeds: list[int], methods: list[str], ff_sizes: list[int],
                   common: dict, data) -> None:
    """Train or reuse one variant's runs, then print its tables (mean ± std over seeds)."""
    per_seed: dict[str, dict[str, list[dict[int, float]]]] = {"top1": {}, "knn1": {}, "zero": {}}
    ff_rows: dict[str, dict[int, dict[int, float]]] = {"top1": {}, "knn1": {}}
    for run, config in variant_runs(name, seeds, methods, ff_sizes, common, args.rep_dim):
        run_dir = args.out / run
        if config.mode == "ff" and "ff" not in methods and run_status(run_dir, config) != "done":
            continue
        result = run_or_reuse(config, run_dir, data=data, progress=False)
        print(f"{run}: top1 " + " ".join(f"{m}:{v * 100:.2f}" for m, v in per_size(result, "top1").items()), flush=True)
        if config.mode == "ff":
            for key in ff_rows:
                ff_rows[key].setdefault(config.seed, {}).update(per_size(result, key))
            continue
        label = "MRL" if config.mode == "mrl" else "MRL-E"
        for key in ("top1", "knn1"):
            per_seed[key].setdefault(label, []).append(per_size(result, key))
        _, model, _, device = load_run(run_dir, data)
        per_seed["zero"].setdefault(label, []).append(zero_prefix_share(embed(model, data.test.x, device), config.nesting))
    for key in ff_rows:
        if ff_rows[key]:
            per_seed[key]["FF"] = [ff_rows[key][s] for s in sorted(ff_rows[key])]
    print(f"\n### {name} {VARIANTS[name]}: seeds {seeds}, {args.epochs} epochs, max_train {args.max_train}\n")
    for key, title in (("top1", "top-1 (%)"), ("knn1", "1-NN (%)"), ("zero", "test rows with an all-zero prefix (%)")):
        means, stds = aggregate(per_seed[key])
        counts = ", ".join(f"{label} {len(v)}" for label, v in per_seed[key].items())
        print(f"{title}, mean ± std over seeds ({counts}):\n\n{markdown_table(means, stds=stds)}\n")
    means, _ = aggregate(per_seed["top1"])
    if "MRL" in means and "FF" in means:
        print("MRL minus FF (points): " + ", ".join(
            f"{m}: {(means['MRL'][m] - means['FF'][m]) * 100:+.2f}" for m in means["FF"]), flush=True)
    print(flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
