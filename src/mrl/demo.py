"""``mrl demo``: MRL, MRL-E and a few FF baselines on Fashion-MNIST, evaluated at every size.

A small-scale version of the paper's Figure 2 (linear top-1 vs size) and Table 2 (1-NN) that runs
on a laptop CPU. Results go to OUT/report.md, OUT/top1.png, OUT/knn1.png and OUT/results.json.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from mrl.compare import aggregate
from mrl.config import TrainConfig
from mrl.data import load_dataset
from mrl.evaluation import per_size
from mrl.experiments import check_folder, claim_folder, run_or_reuse
from mrl.io import atomic_write_text, write_json
from mrl.nesting import parse_nesting
from mrl.report import markdown_table, plot_vs_size
from mrl.validation import check_int


def run_dir_name(name: str, seed: int, first_seed: int) -> str:
    """runs/<name> for the first seed (the layout of a one-seed demo), runs/seed-S/<name> for others."""
    return name.lower() if seed == first_seed else f"seed-{seed}/{name.lower()}"


def run_demo(
    out: str | Path, data: str = "fashion-mnist", data_dir: str | None = None, arch: str = "mlp",
    rep_dim: int = 2048, ff_dims: str = "8,32,2048", epochs: int = 10, max_train: int | None = None, seed: int = 0,
    seeds: int = 1, rep_activation: str = "none", progress: bool = True, echo: Callable[[str], None] = print,
) -> dict:
    """Train (or reuse) every demo run under ``out`` for seeds ``seed .. seed + seeds - 1``, evaluate,
    and write the report (mean ± sample std over seeds when there are several)."""
    out = Path(out)
    ff_sizes = parse_nesting(ff_dims, rep_dim)
    seeds = check_int("seeds", seeds, min=1, max=1000)
    seed_list = list(range(seed, seed + seeds))
    common = dict(data=data, data_dir=data_dir, arch=arch, epochs=epochs, max_train=max_train,
                  rep_activation=rep_activation)
    configs = {
        (name, s): config
        for s in seed_list
        for name, config in {
            "MRL": TrainConfig(mode="mrl", rep_dim=rep_dim, seed=s, **common),
            "MRL-E": TrainConfig(mode="mrl-e", rep_dim=rep_dim, seed=s, **common),
            **{f"FF-{m}": TrainConfig(mode="ff", ff_dim=m, seed=s, **common) for m in ff_sizes},
        }.items()
    }
    check_folder(out, "demo", inputs=[data, data_dir])  # before the data set loads
    dataset = load_dataset(data, data_dir, max_train, streaming=False)
    with claim_folder(out, "demo", inputs=[data, data_dir]):
        results, seconds = {}, {}
        for (name, s), config in configs.items():
            folder = run_dir_name(name, s, seed)
            echo(f"== {name}, seed {s}")
            started = time.time()
            results[name, s] = run_or_reuse(config, out / "runs" / folder, data=dataset, progress=progress)
            seconds[folder] = time.time() - started

        def series(key: str) -> dict[str, list[dict[int, float]]]:
            return {
                "MRL": [per_size(results["MRL", s], key) for s in seed_list],
                "MRL-E": [per_size(results["MRL-E", s], key) for s in seed_list],
                "FF": [{m: results[f"FF-{m}", s][key][str(m)] for m in ff_sizes} for s in seed_list],
            }

        top1, top1_std = aggregate(series("top1"))
        knn1, knn1_std = aggregate(series("knn1"))
        stds = (top1_std, knn1_std) if seeds > 1 else (None, None)
        ff = ["FF"]
        plot_vs_size(out / "top1.png", top1, "test top-1 accuracy (%)", f"{data}: linear top-1 vs size ({seeds} seed(s))",
                     stds=stds[0], points=ff)
        plot_vs_size(out / "knn1.png", knn1, "test 1-NN accuracy (%)", f"{data}: 1-NN vs size ({seeds} seed(s))",
                     stds=stds[1], points=ff)
        table1, table2 = markdown_table(top1, stds=stds[0]), markdown_table(knn1, stds=stds[1])
        seeds_text = (f"seed {seed}: one run per number, so no spread is shown" if seeds == 1 else
                      f"seeds {seed_list[0]}..{seed_list[-1]}: every number is the mean ± sample std of {seeds} runs")
        report = "\n".join([
            f"# mrl demo: {data}",
            "",
            f"Backbone `{arch}`, d = {rep_dim}, {epochs} epoch(s) per run, representation activation `{rep_activation}`"
            + (f", {max_train} training examples" if max_train else "") + f"; {seeds_text}. Test set accuracy in %.",
            "MRL and MRL-E are one model each, evaluated at every nesting size; each FF column entry is",
            "a separate model trained with a representation of exactly that size (drawn as points: no FF",
            "model exists between them).",
            "",
            "## Linear classification, top-1 (%)",
            "",
            table1,
            "",
            "![top-1 vs size](top1.png)",
            "",
            "## 1-NN accuracy (%) (database: train embeddings, cosine)",
            "",
            table2,
            "",
            "![1-NN vs size](knn1.png)",
            "",
            "## Runs",
            "",
            "| run | directory | wall time this invocation (s) |",
            "|---|---|---:|",
            *[f"| {folder} | runs/{folder} | {sec:.0f} |" for folder, sec in seconds.items()],
            "",
        ])
        atomic_write_text(out / "report.md", report)
        write_json(out / "results.json", {
            "seeds": seed_list,
            "top1": {k: {str(m): v for m, v in s.items()} for k, s in top1.items()},
            "knn1": {k: {str(m): v for m, v in s.items()} for k, s in knn1.items()},
            "top1_std": {k: {str(m): v for m, v in s.items()} for k, s in top1_std.items()},
            "knn1_std": {k: {str(m): v for m, v in s.items()} for k, s in knn1_std.items()},
        })
        echo(f"\nTop-1 (%), {seeds} seed(s):\n" + table1 + "\n\n1-NN (%):\n" + table2 + f"\n\nReport: {out / 'report.md'}")
        return {"top1": top1, "knn1": knn1, "top1_std": top1_std, "knn1_std": knn1_std, "seeds": seed_list}
