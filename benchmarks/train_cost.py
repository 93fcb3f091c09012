"""Training cost of MRL and MRL-E against the FF-d model they replace: seconds per step.

Same backbone, same batch, same optimiser; only the head and the loss differ (MRL: |M| separate
heads and |M| loss terms; MRL-E: one tied head computed blockwise; FF-d: one head of full width).
The methods are timed in interleaved rounds so that drift in machine load hits all of them alike.

    .venv/bin/python benchmarks/train_cost.py                      # resnet, d=2048, batch 256
    .venv/bin/python benchmarks/train_cost.py --arch mlp --steps 30

Targets (issue 2): MRL <= 1.10x FF-d, MRL-E <= 1.05x FF-d.

``--ff-sweep`` (issue 3) instead measures what MRL saves end to end: the wall time of training a
separate FF model for every nesting size against one MRL run, same data, epochs and recipe (real
``mrl.training.train`` runs on Fashion-MNIST in a temporary folder), printed as a ratio. MRL replaces
|M| models; the ratio is below |M| because an FF-m model with small m still pays for the whole trunk.

    .venv/bin/python benchmarks/train_cost.py --ff-sweep --arch mlp --epochs 2 --max-train 5000
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mrl.losses import MatryoshkaLoss
from mrl.models import MatryoshkaClassifier, create_model
from mrl.nesting import default_nesting


def make(method: str, arch: str, dim: int, num_classes: int = 10):
    torch.manual_seed(0)
    kwargs = dict(in_channels=1) if arch == "resnet" else dict(in_features=784)
    backbone = create_model(arch, num_features=dim, **kwargs)
    nesting = [dim] if method == "FF-d" else default_nesting(dim)
    model = MatryoshkaClassifier(backbone, num_classes, nesting, tied=method == "MRL-E")
    return model, MatryoshkaLoss(nesting=nesting), torch.optim.AdamW(model.parameters(), lr=1e-3)


def step_seconds(model, criterion, optimizer, x, y, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def ff_sweep_vs_mrl(arch: str, dim: int, epochs: int, max_train: int | None, batch: int, repeats: int) -> None:
    """Wall time of training FF-m for every m in the default nesting vs one MRL run (same recipe)."""
    from mrl.config import TrainConfig
    from mrl.data import load_dataset
    from mrl.training import train

    data = load_dataset("fashion-mnist", None, max_train)
    nesting = default_nesting(dim)
    common = dict(arch=arch, epochs=epochs, max_train=max_train, batch_size=batch)
    configs = {"MRL": TrainConfig(mode="mrl", rep_dim=dim, **common),
               **{f"FF-{m}": TrainConfig(mode="ff", ff_dim=m, **common) for m in nesting}}
    times: dict[str, list[float]] = {name: [] for name in configs}
    with tempfile.TemporaryDirectory() as tmp:
        warm = TrainConfig(mode="mrl", rep_dim=dim, **{**common, "epochs": 1})
        train(warm, Path(tmp) / "warm-up", progress=False, data=data)  # first-call costs, not timed
        for r in range(repeats):  # interleaved repeats: load drift hits every run alike
            for name, config in configs.items():
                start = time.perf_counter()
                train(config, Path(tmp) / f"{name}-{r}", progress=False, data=data)
                times[name].append(time.perf_counter() - start)
    print(f"arch={arch} d={dim} epochs={epochs} n_train={len(data.train)} batch={batch} "
          f"threads={torch.get_num_threads()} repeats={repeats} |M|={len(nesting)}")
    print(f"{'run':8s} {'seconds (mean +- std)':>24s}")
    for name, t in times.items():
        std = statistics.stdev(t) if len(t) > 1 else 0.0
        print(f"{name:8s} {statistics.mean(t):14.2f} +- {std:6.2f}")
    ff_total = [sum(times[f"FF-{m}"][r] for m in nesting) for r in range(repeats)]
    ratios = [f / m for f, m in zip(ff_total, times["MRL"])]
    print(f"all FF sizes: {statistics.mean(ff_total):.2f} s; one MRL run: {statistics.mean(times['MRL']):.2f} s")
    print(f"ratio (all FF / MRL): {statistics.mean(ratios):.2f}"
          + (f" +- {statistics.stdev(ratios):.2f}" if repeats > 1 else "") + f"  (|M| = {len(nesting)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet", choices=["resnet", "mlp"])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--ff-sweep", action="store_true",
                        help="time training every FF size against one MRL run (wall time, same epochs)")
    parser.add_argument("--epochs", type=int, default=2, help="--ff-sweep: epochs per run")
    parser.add_argument("--max-train", type=int, default=5000, help="--ff-sweep: training examples")
    parser.add_argument("--repeats", type=int, default=2, help="--ff-sweep: interleaved repeats")
    args = parser.parse_args()
    if args.ff_sweep:
        ff_sweep_vs_mrl(args.arch, args.dim, args.epochs, args.max_train, args.batch, args.repeats)
        return

    x = torch.randn(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    methods = {name: make(name, args.arch, args.dim) for name in ("FF-d", "MRL", "MRL-E")}
    for parts in methods.values():
        step_seconds(*parts, x, y, args.warmup)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, parts in methods.items():
            times[name] += step_seconds(*parts, x, y, args.steps)

    print(f"arch={args.arch} d={args.dim} batch={args.batch} threads={torch.get_num_threads()} cores={os.cpu_count()}")
    print(f"{'method':8s} {'ms/step (median)':>18s} {'mean +- std':>16s} {'ratio to FF-d':>14s}")
    base = statistics.median(times["FF-d"])
    for name, t in times.items():
        med = statistics.median(t)
        print(f"{name:8s} {med * 1e3:18.1f} {statistics.mean(t) * 1e3:8.1f} +- {statistics.stdev(t) * 1e3:4.1f} {med / base:14.3f}")


if __name__ == "__main__":
    main()
