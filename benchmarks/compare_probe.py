"""One linear probe for every learned representation of an ``mrl compare`` folder.

The comparison's top-1 rows mix two kinds of classifier: MRL, MRL-E and FF use the heads trained
with the network (a few hundred SGD steps on a small budget), while SVD and random features use a
:class:`~mrl.baselines.LinearProbe` fitted to convergence. This script puts the same probe on MRL
and MRL-E prefixes z[:m] and on each FF-m representation, so the representations themselves can be
compared with the SVD row on equal terms (MRL paper, section 4.1 evaluates SVD the same way).

    .venv/bin/python benchmarks/compare_probe.py runs/compare
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch

from mrl.baselines import LinearProbe
from mrl.compare import aggregate
from mrl.data import load_dataset
from mrl.evaluation import embed, load_run
from mrl.report import markdown_table
from mrl.runs import load_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="an mrl compare --out folder")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = sorted(args.out.glob("runs/seed-*"), key=lambda p: int(p.name.split("-")[1]))
    first = load_config(seeds[0] / "mrl")
    data = load_dataset(first.data, first.data_dir, first.max_train)
    y_train, y_test = data.train.y.numpy(), data.test.y.numpy()
    per_seed: dict[str, list[dict[int, float]]] = {"MRL": [], "MRL-E": [], "FF": []}
    for seed_dir in seeds:
        for name, label in (("mrl", "MRL"), ("mrl-e", "MRL-E")):
            config, model, _, device = load_run(seed_dir / name, data)
            z_train, z_test = embed(model, data.train.x, device), embed(model, data.test.x, device)
            per_seed[label].append({m: LinearProbe().fit(z_train[:, :m], y_train).score(z_test[:, :m], y_test)
                                    for m in config.nesting})
        ff = {}
        for run in sorted(seed_dir.glob("ff-*")):
            if re.fullmatch(r"ff-\d+", run.name):
                _, model, _, device = load_run(run, data)
                m = int(run.name[3:])
                ff[m] = LinearProbe().fit(embed(model, data.train.x, device), y_train).score(
                    embed(model, data.test.x, device), y_test)
        per_seed["FF"].append(ff)
        print(f"{seed_dir.name} done", flush=True)
    means, stds = aggregate(per_seed)
    print(f"\nLinear probe top-1 (%) on the test set, mean ± std over {len(seeds)} seeds:\n")
    print(markdown_table(means, stds=stds))
    print("\nMRL minus FF per size (probe, points): " + ", ".join(
        f"{m}: {(means['MRL'][m] - means['FF'][m]) * 100:+.2f}" for m in means["FF"] if m in means["MRL"]))


if __name__ == "__main__":
    main()
