"""Training cost of MRL and MRL-E against the FF-d model they replace: seconds per step.

Same backbone, same batch, same optimiser; only the head and the loss differ (MRL: |M| separate
heads and |M| loss terms; MRL-E: one tied head computed blockwise; FF-d: one head of full width).
The methods are timed in interleaved rounds so that drift in machine load hits all of them alike.

    .venv/bin/python benchmarks/train_cost.py                      # resnet, d=2048, batch 256
    .venv/bin/python benchmarks/train_cost.py --arch mlp --steps 30

Targets (issue 2): MRL <= 1.10x FF-d, MRL-E <= 1.05x FF-d.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet", choices=["resnet", "mlp"])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per method per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

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
