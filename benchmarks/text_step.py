"""Benchmark: cost of one training step with the Matryoshka loss vs the plain loss, on all-MiniLM-L6-v2.

Both steps run the same model on the same batches of WordNet pairs (each batch is timed once per
variant) (forward of queries and
positives, loss, backward, AdamW update); only the loss differs: MRL's nested in-batch ranking loss
over --nesting vs the same loss at the full size alone. The two are interleaved (A B B A ...) after
--warmup steps each, so drifts of a shared machine hit both alike; the ratio of the means is the
result. Each step is timed twice: wall-clock and the process's CPU time (``time.process_time``; with
one torch thread this is the step's compute, which a crowded machine does not inflate the way it
inflates wall-clock). The nested loss adds one [B, B] similarity matrix per size on top of a transformer forward
and backward, so the ratio should stay close to 1.

Reproduce:

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/text_step.py --repeats 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mrl.text.losses import TextPairLoss
from mrl.text.model import load_text_model
from mrl.text.pairs import load_pairs
from mrl.text.train import train_step


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per step")
    parser.add_argument("--nesting", default="24,48,96,192,384", help="sizes of the Matryoshka loss")
    parser.add_argument("--repeats", type=int, default=10, help="timed steps of each variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each variant first")
    parser.add_argument("--max-seq-length", type=int, default=64, help="tokens per text")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    nesting = [int(m) for m in args.nesting.split(",")]

    pairs = load_pairs("wordnet")
    model = load_text_model("all-MiniLM-L6-v2", max_seq_length=args.max_seq_length)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    losses = {"matryoshka": TextPairLoss(nesting), "plain": TextPairLoss(nesting[-1:])}
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in losses}
    generator = torch.Generator().manual_seed(0)

    def step(name: str, rows: list[int]) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        train_step(model, losses[name], pairs, rows)
        optimizer.step()
        return time.perf_counter() - wall, time.process_time() - cpu

    def batch() -> list[int]:
        return torch.randint(len(pairs), (args.batch_size,), generator=generator).tolist()

    for _ in range(args.warmup):
        rows = batch()
        for name in losses:
            step(name, rows)
    order = list(losses)
    for i in range(args.repeats):
        rows = batch()  # both variants take the same texts, so text lengths do not favour either
        for name in order if i % 2 == 0 else order[::-1]:
            wall, cpu = step(name, rows)
            times[name]["wall"].append(wall)
            times[name]["cpu"].append(cpu)

    for clock in ("cpu", "wall"):
        for name, series in times.items():
            values = series[clock]
            print(f"{name:>10} {clock:>4}: {statistics.mean(values) * 1000:8.1f} +- {statistics.stdev(values) * 1000:6.1f} ms "
                  f"per step ({len(values)} steps, batch {args.batch_size})")
        ratio = statistics.mean(times["matryoshka"][clock]) / statistics.mean(times["plain"][clock])
        print(f"matryoshka / plain step time ({clock}): {ratio:.3f}  (nesting {nesting}, interleaved, "
              f"{args.warmup} warm-up steps each)")


if __name__ == "__main__":
    main()
