"""``mrl demo``: MRL, MRL-E and a few FF baselines on Fashion-MNIST, evaluated at every size.

A small-scale version of the paper's Figure 2 (linear top-1 vs size) and Table 2 (1-NN) that runs
on a laptop CPU. Results go to OUT/report.md, OUT/top1.png, OUT/knn1.png and OUT/results.json.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from mrl.config import TrainConfig
from mrl.data import load_dataset
from mrl.evaluation import per_size
from mrl.experiments import claim_folder, run_or_reuse
from mrl.io import atomic_write_text, write_json
from mrl.nesting import parse_nesting
from mrl.report import markdown_table, plot_vs_size


def run_demo(
    out: str | Path, data: str = "fashion-mnist", data_dir: str | None = None, arch: str = "mlp",
    rep_dim: int = 2048, ff_dims: str = "8,32,2048", epochs: int = 10, max_train: int | None = None, seed: int = 0,
    progress: bool = True, echo: Callable[[str], None] = print,
) -> dict:
    """Train (or reuse) every demo run under ``out``, evaluate, and write the report."""
    out = Path(out)
    ff_sizes = parse_nesting(ff_dims, rep_dim)
    common = dict(data=data, data_dir=data_dir, arch=arch, epochs=epochs, max_train=max_train, seed=seed)
    configs = {
        "MRL": TrainConfig(mode="mrl", rep_dim=rep_dim, **common),
        "MRL-E": TrainConfig(mode="mrl-e", rep_dim=rep_dim, **common),
        **{f"FF-{m}": TrainConfig(mode="ff", ff_dim=m, **common) for m in ff_sizes},
    }
    dataset = load_dataset(data, data_dir, max_train)
    with claim_folder(out, "demo"):
        results, seconds = {}, {}
        for name, config in configs.items():
            echo(f"== {name}")
            started = time.time()
            results[name] = run_or_reuse(config, out / "runs" / name.lower(), data=dataset, progress=progress)
            seconds[name] = time.time() - started

        top1 = {"MRL": per_size(results["MRL"], "top1"), "MRL-E": per_size(results["MRL-E"], "top1"),
                "FF": {m: results[f"FF-{m}"]["top1"][str(m)] for m in ff_sizes}}
        knn1 = {"MRL": per_size(results["MRL"], "knn1"), "MRL-E": per_size(results["MRL-E"], "knn1"),
                "FF": {m: results[f"FF-{m}"]["knn1"][str(m)] for m in ff_sizes}}
        plot_vs_size(out / "top1.png", top1, "test top-1 accuracy (%)", f"{data}: linear top-1 vs size")
        plot_vs_size(out / "knn1.png", knn1, "test 1-NN accuracy (%)", f"{data}: 1-NN vs size")
        table1, table2 = markdown_table(top1), markdown_table(knn1)
        report = "\n".join([
            f"# mrl demo: {data}",
            "",
            f"Backbone `{arch}`, d = {rep_dim}, {epochs} epoch(s) per run, seed {seed}"
            + (f", {max_train} training examples" if max_train else "") + ". Test set accuracy in %.",
            "MRL and MRL-E are one model each, evaluated at every nesting size; each FF column entry is",
            "a separate model trained with a representation of exactly that size.",
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
            *[f"| {name} | runs/{name.lower()} | {seconds[name]:.0f} |" for name in configs],
            "",
        ])
        atomic_write_text(out / "report.md", report)
        write_json(out / "results.json", {"top1": {k: {str(m): v for m, v in s.items()} for k, s in top1.items()},
                                          "knn1": {k: {str(m): v for m, v in s.items()} for k, s in knn1.items()}})
        echo("\nTop-1 (%):\n" + table1 + "\n\n1-NN (%):\n" + table2 + f"\n\nReport: {out / 'report.md'}")
        return {"top1": top1, "knn1": knn1}
