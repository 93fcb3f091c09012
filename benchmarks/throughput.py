"""Paper-scale throughput: ResNet-50 training images/s and peak memory for MRL, MRL-E and FF-2048,
the streaming loader's images/s on its own, and a training process's memory against data-set size.

1. ``model``: one training step (forward, MatryoshkaLoss, backward, SGD) of ResNet-50 with 1000
   classes on a fixed random batch, for FF-2048 (one 2048-d head), MRL (9 heads, d = 8..2048) and
   MRL-E (tied heads). Methods run in interleaved rounds after warm-up, so load drift hits all alike;
   the figure that matters is the ratio to FF-2048 (the paper: MRL costs about one model). On CUDA:
   bf16 autocast, channels_last, 224 px, peak memory from torch.cuda.max_memory_allocated. On CPU:
   fp32 at a small image size; peak memory is the resident-set peak of a fresh process that builds
   only that method and takes two steps, over its baseline after imports (/proc/self/clear_refs).
2. ``loader``: images/s of the streaming DataLoader alone (decode, RandomResizedCrop, flip,
   collate) for several worker counts, on a generated folder of PNGs or on ``--data ROOT``.
3. ``memory``: peak proportional memory (PSS of the training process plus its DataLoader workers,
   sampled from /proc) of one ``mrl train`` epoch on generated folders of growing size, streamed against the
   in-memory image-folder loader on the same images: streamed should stay flat.

    .venv/bin/python benchmarks/throughput.py model --image-size 64 --batch 16      # CPU
    .venv/bin/python benchmarks/throughput.py model --image-size 32 --batch 8 --rounds 0   # CPU memory only
    .venv/bin/python benchmarks/throughput.py model                                 # GPU: 224 px, batch 256, bf16
    .venv/bin/python benchmarks/throughput.py loader --workers 0,1,2 --images 2000
    .venv/bin/python benchmarks/throughput.py memory --sizes 500,1000,2000,4000
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mrl.losses import MatryoshkaLoss
from mrl.models import MatryoshkaClassifier, create_model
from mrl.nesting import default_nesting
from mrl.recipe import Precision

METHODS = ("FF-2048", "MRL", "MRL-E")


def make(method: str, channels_last: bool, device: torch.device):
    torch.manual_seed(0)
    nesting = [2048] if method == "FF-2048" else default_nesting(2048)
    model = MatryoshkaClassifier(create_model("resnet50"), 1000, nesting, tied=method == "MRL-E").to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-5)
    return model, MatryoshkaLoss(nesting=nesting).to(device), optimizer


def train_steps(parts, x, y, precision: Precision, steps: int) -> list[float]:
    model, criterion, optimizer = parts
    model.train()
    times = []
    for _ in range(steps):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            logits = model(x)
        precision.backward(criterion(logits.float(), y))
        precision.step(optimizer)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:")) / 1024


def _cpu_peak_rss(method: str, batch: int, size: int, queue) -> None:
    """Peak resident memory of building ``method`` and two training steps, over the process's baseline."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak (VmHWM) to the current RSS: imports are not counted
    baseline = _status_mib("VmRSS")
    parts = make(method, False, torch.device("cpu"))
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    train_steps(parts, x, y, Precision("fp32", torch.device("cpu")), 2)
    queue.put(_status_mib("VmHWM") - baseline)


def bench_model(args) -> None:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    size = args.image_size or (224 if cuda else 64)
    batch = args.batch or (256 if cuda else 16)
    precision_name = args.precision or ("bf16" if cuda else "fp32")
    precision = Precision(precision_name, device)
    channels_last = cuda
    x = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=device)
    times: dict[str, list[float]] = {name: [] for name in METHODS}
    if args.rounds:
        methods = {name: make(name, channels_last, device) for name in METHODS}
        for parts in methods.values():
            train_steps(parts, x, y, precision, args.warmup)
        for _ in range(args.rounds):
            for name, parts in methods.items():
                times[name] += train_steps(parts, x, y, precision, args.steps)
        del methods
    peak = {}
    if cuda:  # one method on the GPU at a time: its peak is that method's alone (plus the batch)
        for name in METHODS:
            parts = make(name, channels_last, device)
            torch.cuda.reset_peak_memory_stats()
            train_steps(parts, x, y, precision, 2)
            peak[name] = torch.cuda.max_memory_allocated() / 2**20
            del parts
            torch.cuda.empty_cache()
    else:
        ctx = mp.get_context("spawn")  # a fresh process per method: its peak is that method's alone
        for name in METHODS:
            queue = ctx.Queue()
            proc = ctx.Process(target=_cpu_peak_rss, args=(name, batch, size, queue))
            proc.start()
            peak[name] = queue.get()
            proc.join()
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"ResNet-50, 1000 classes, {where}, {precision_name}, image {size}px, batch {batch}, "
          f"{args.rounds} rounds x {args.steps} steps after {args.warmup} warm-up")
    print(f"{'method':8s} {'images/s (median)':>18s} {'ms/step mean +- std':>22s} {'step / FF-2048':>15s} {'peak MiB':>10s}")
    for name, t in times.items():
        if t:
            med, base = statistics.median(t), statistics.median(times["FF-2048"])
            timing = (f"{batch / med:18.1f} {statistics.mean(t) * 1e3:12.1f} +- {statistics.stdev(t) * 1e3:6.1f} "
                      f"{med / base:15.3f}")
        else:
            timing = f"{'-':>18s} {'-':>22s} {'-':>15s}"
        print(f"{name:8s} {timing} {peak[name]:10.0f}")
    if not cuda:
        print("peak MiB on CPU: resident-set peak of a fresh process building that method and taking 2 steps, "
              "over its baseline after imports")


def write_folder(root: Path, images: int, classes: int = 10, size: int = 64, val: int = 1) -> Path:
    """ROOT/train/<class>/*.png with ``images`` random PNGs in all, and ``val`` per class in ROOT/val."""
    rng = np.random.default_rng(0)
    from PIL import Image

    for split, count in (("train", images // classes), ("val", val)):
        for c in range(classes):
            folder = root / split / f"c{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:05d}.png", compress_level=1)
    return root


def bench_loader(args) -> None:
    from mrl.data import load_dataset
    from mrl.data.batches import StreamBatches

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else write_folder(Path(tmp) / "data", args.images, size=args.source_size)
        data = load_dataset(str(root), image_size=args.image_size or 224)
        print(f"loader: {len(data.train)} images from {root}, crop {data.image_size}px, batch {args.batch or 64}, "
              f"{os.cpu_count()} cores, {args.rounds} rounds")
        results: dict[int, list[float]] = {w: [] for w in args.workers}
        for r in range(args.rounds + 1):  # round 0 warms the page cache, not timed
            for workers in args.workers:
                batches = StreamBatches(data.train, args.batch or 64, 0, 1, seed=r, workers=workers)
                start = time.perf_counter()
                count = sum(len(y) for _, y in batches.epoch(r, torch.device("cpu")))
                if r:
                    results[workers].append(count / (time.perf_counter() - start))
        print(f"{'workers':>8s} {'images/s mean +- std':>22s}")
        for workers, rates in results.items():
            std = statistics.stdev(rates) if len(rates) > 1 else 0.0
            print(f"{workers:8d} {statistics.mean(rates):12.0f} +- {std:6.0f}")


def _tree_pss_mib(pid: int) -> float:
    """Proportional set size of ``pid`` and all its descendants, from /proc (pages shared by forked
    workers counted once in all, not once per process as RSS would)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    stack += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError, StopIteration):
            continue
    return total / 1024


def peak_train_pss(data: Path, out: Path, workers: int, image_size: int | None) -> float:
    cmd = [sys.executable, "-m", "mrl", "train", "--data", str(data), "--arch", "mlp", "--rep-dim", "64",
           "--nesting", "8,64", "--epochs", "1", "--batch-size", "64", "--workers", str(workers), "--quiet",
           "--out", str(out)]
    if image_size:
        cmd += ["--image-size", str(image_size)]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"})
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, _tree_pss_mib(proc.pid))
        time.sleep(0.05)
    if proc.returncode:
        raise SystemExit(f"mrl train failed on {data}")
    return peak


def bench_memory(args) -> None:
    size = args.source_size
    print(f"peak PSS (MiB) of one `mrl train` epoch (mlp, process tree incl. {args.mem_workers} workers when streamed), "
          f"{size}x{size} RGB PNGs; in-memory float32 copy = N x {3 * size * size * 4 / 2**20:.3f} MiB")
    print(f"{'images':>7s} {'streamed':>9s} {'in memory':>10s}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            root = write_folder(Path(tmp) / f"s{n}", n, size=size)
            flat = Path(tmp) / f"m{n}"  # the in-memory loader reads ROOT/train + ROOT/test
            flat.mkdir()
            (flat / "train").symlink_to(root / "train")
            (flat / "test").symlink_to(root / "val")
            streamed = peak_train_pss(root, Path(tmp) / f"run-s{n}", args.mem_workers, size)
            in_memory = peak_train_pss(flat, Path(tmp) / f"run-m{n}", 0, None)
            print(f"{n:7d} {streamed:9.0f} {in_memory:10.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["model", "loader", "memory"])
    parser.add_argument("--image-size", type=int, default=None, help="model: 224 on CUDA, 64 on CPU; loader: 224")
    parser.add_argument("--batch", type=int, default=None, help="model: 256 on CUDA, 16 on CPU; loader: 64")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None, help="model: bf16 on CUDA")
    parser.add_argument("--steps", type=int, default=5, help="model: timed steps per method per round")
    parser.add_argument("--rounds", type=int, default=3, help="model: 0 measures memory only")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--data", default=None, help="loader: an ImageNet-style folder instead of generated PNGs")
    parser.add_argument("--images", type=int, default=2000, help="loader: generated images")
    parser.add_argument("--source-size", type=int, default=64, help="loader/memory: side of the generated PNGs")
    parser.add_argument("--workers", default="0,1,2", help="loader: comma-separated worker counts")
    parser.add_argument("--sizes", default="500,1000,2000,4000", help="memory: data-set sizes")
    parser.add_argument("--mem-workers", type=int, default=2, help="memory: DataLoader workers when streamed")
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    args.sizes = [int(n) for n in args.sizes.split(",")]
    {"model": bench_model, "loader": bench_loader, "memory": bench_memory}[args.what](args)


if __name__ == "__main__":
    main()
