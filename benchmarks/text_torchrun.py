"""Benchmark: `torchrun` with 2 CPU ranks (gloo) trains all-MiniLM-L6-v2 like one process of the whole batch.

Under ``torchrun --nproc_per_node=2`` each rank embeds half of every global batch, the in-batch
negatives are gathered across ranks with gradients (:func:`mrl.text.losses.gather_with_grad`) and
the gradients are averaged, so the two ranks should take the same steps as one process that embeds
the whole batch. This script runs both through the ``mrl text train`` command line on the same
WordNet pairs, seed and schedule, and compares the mean loss per size after every step
(``metrics.jsonl``, one checkpoint per step) and the final weights.

Dropout draws different masks for a batch split over two ranks than for the whole batch, so both
runs start from a copy of the packaged MiniLM with dropout set to 0 (its own weights, saved as a
local sentence-transformers folder); what remains are float32 rounding differences (sums over
ranks, padding to each rank's longest text), which AdamW's normalised steps carry into the weights.

Reproduce:

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/text_torchrun.py --steps 2 --work-dir runs/text_torchrun
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from mrl.text.model import load_text_model
from mrl.text.train import load_run_model


def dropout_free_minilm(folder: Path) -> Path:
    """Save all-MiniLM-L6-v2 with its dropout probabilities set to 0 into ``folder``."""
    model = load_text_model("all-MiniLM-L6-v2")
    config = model[0].auto_model.config
    config.hidden_dropout_prob = 0.0
    config.attention_probs_dropout_prob = 0.0
    model.save(str(folder), safe_serialization=True)
    return folder


def train(command: list[str], model: Path, out: Path, steps: int, batch_size: int, threads: int) -> None:
    """One ``mrl text train`` run with a checkpoint (and a metrics line) after every step."""
    args = ["text", "train", "--model", str(model), "--pairs", "wordnet", "--nesting", "24,48,96,192,384",
            "--batch-size", str(batch_size), "--max-steps", str(steps), "--save-every", "1", "--lr", "5e-5",
            "--max-seq-length", "48", "--quiet", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    subprocess.run([*command, *args], check=True, env=env)


def losses(run: Path) -> list[dict[str, float]]:
    """Mean loss per size of every step, from the run's metrics.jsonl."""
    return [json.loads(line)["loss_per_size"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps of each run")
    parser.add_argument("--batch-size", type=int, default=32, help="global batch (each of 2 ranks takes half)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    parser.add_argument("--work-dir", type=Path, default=Path("runs/text_torchrun"), help="scratch folder (replaced)")
    args = parser.parse_args(argv)
    if args.work_dir.exists():
        shutil.rmtree(args.work_dir)
    args.work_dir.mkdir(parents=True)
    model = dropout_free_minilm(args.work_dir / "minilm-no-dropout")
    single, ranks = args.work_dir / "one-process", args.work_dir / "two-ranks"
    train([sys.executable, "-m", "mrl"], model, single, args.steps, args.batch_size, args.threads)
    train([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mrl"],
          model, ranks, args.steps, args.batch_size, args.threads)

    one, two = losses(single), losses(ranks)
    loss_diff = max(abs(a[m] - b[m]) for a, b in zip(one, two, strict=True) for m in a)
    start = load_text_model(model).state_dict()
    final_one, final_two = load_run_model(single).state_dict(), load_run_model(ranks).state_dict()
    weight_diff = max(float((final_one[n] - final_two[n]).abs().max()) for n in final_one)
    moved = max(float((final_one[n] - start[n]).abs().max()) for n in final_one)
    # Adam divides by sqrt(v): a parameter whose gradient is rounding noise can step either way, so
    # the max alone overstates; the mean difference relative to the mean change tells the steps apart.
    total_diff = sum(float((final_one[n] - final_two[n]).abs().sum()) for n in final_one)
    total_moved = sum(float((final_one[n] - start[n]).abs().sum()) for n in final_one)
    relative = total_diff / total_moved
    for step, (a, b) in enumerate(zip(one, two), start=1):
        print(f"step {step}: one process " + " ".join(f"{m}:{v:.6f}" for m, v in a.items()))
        print(f"        two ranks   " + " ".join(f"{m}:{v:.6f}" for m, v in b.items()))
    print(f"max |loss difference| over steps and sizes: {loss_diff:.2e}")
    print(f"max |weight difference| after {args.steps} steps: {weight_diff:.2e} "
          f"(the weights moved by up to {moved:.2e} from the start)")
    print(f"mean |weight difference| / mean |weight change|: {relative:.2e}")
    return {"loss_diff": loss_diff, "weight_diff": weight_diff, "moved": moved, "relative_weight_diff": relative}


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
