"""Load test of `mrl serve`: the funnel vs exact full-dim search through the same server, and Qdrant.

Starts `mrl serve` on 127.0.0.1 (ephemeral port) once per index and sends a bounded load from an
asyncio client (a minimal keep-alive HTTP/1.1 client, or httpx with --client httpx): at each concurrency (default 1, 8, 32) a fixed number of single-query JSON
requests, capped in time. Reports QPS, p50/p95/p99 latency, errors and kNN-recall@10 against exact
search, then the funnel server's RSS before and after a soak (--soak-seconds at concurrency 8).
Two servers run at once and take turns in --rounds alternating rounds per level: the funnel index
(16-dim flat shortlist, funnel tuned for kNN-recall@10 >= --target-recall) and an exact index (the
same vectors with a full-dim flat "shortlist", so every search is FAISS exact inner product). The
servers and this client share the machine, so absolute QPS is low; read the ratios.

Qdrant (embedded, qdrant-edge-py), same queries in this process: the index exported with stages
16, D and any other stage of the tuned funnel, searched one query at a time with the same funnel, exactly (SearchParams(exact=True))
and through the engine's HNSW graph on the 16-dim vector; agreement of the top-10 ids with
FunnelIndex and kNN-recall@10 against exact search.

Data: synthetic MRL-like unit vectors (benchmarks/funnel_search.py `synthetic`), or embeddings from
`mrl embed` with --database/--queries.

    .venv/bin/python benchmarks/serve_load.py --n 100000 --dim 2048 --soak-seconds 120
    .venv/bin/python benchmarks/serve_load.py --database runs/demo/mrl_train.npz --queries runs/demo/mrl_test.npz --soak-seconds 0
    .venv/bin/python benchmarks/serve_load.py --n 5000 --dim 256 --requests 200 --soak-seconds 5    # smoke run
    # 1M x 2048: the data generated once to a float16 .npy in chunks and its exact top-k cached
    # (benchmarks/synthetic_cache.py, reused by benchmarks/pareto.py --cache-dir); both servers map
    # float16 vectors, the exact one also holds FAISS float16 codes (4 GB); tuning bounded to n_1 <= 1024
    .venv/bin/python benchmarks/serve_load.py --n 1000000 --dim 2048 --store mmap --cache-dir runs/cache --skip-qdrant \
        --tune-max-length 1024 --requests 600 --time-cap 45 --soak-seconds 120

Goals (issue 10): 0 errors; RSS growth <= 5% over the soak; at concurrency 8 the funnel serves >= 10x
the QPS of exact search at kNN-recall@10 >= 0.99; Qdrant exact agrees with FunnelIndex on >= 99.5% of
queries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import httpx
import numpy as np
import torch

from funnel_search import synthetic, synthetic_blocks  # same folder: one owner of the synthetic MRL-like data
from synthetic_cache import cached_ground_truth, cached_synthetic
from mrl.io import atomic_file, load_npy, load_npz, write_json
from mrl.metrics import knn_recall_at_k
from mrl.retrieval import FunnelIndex, candidate_funnels, exact_search, format_funnel

logger = logging.getLogger("serve_load")
K = 10


def write_float16(path: Path, blocks, shape: tuple[int, int]) -> np.ndarray:
    """Write float32 row blocks to a float16 .npy (atomically, one block in memory at a time); return it memory-mapped."""
    with atomic_file(path) as tmp:
        table = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        start = 0
        for block in blocks:
            table[start : start + len(block)] = block
            start += len(block)
        table.flush()
        del table
    return load_npy(path, mmap=True)


def start_server(index_dir: Path, workers: int | None, store: str = "memory") -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "mrl", "serve", str(index_dir), "--port", "0", "--store", store]
    if workers:
        command += ["--workers", str(workers)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.startswith("serving "):
        process.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    url = line.split(" on ")[1].strip()
    for _ in range(100):
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("server never became healthy")


def stop_server(process: subprocess.Popen) -> int:
    process.terminate()  # SIGTERM: graceful, expected exit status 0
    return process.wait(timeout=60)


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of process ``pid`` from /proc: VmRSS (all resident pages, mapped file pages
    included) or RssAnon (the process's own memory, without the page cache of a mapped file)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RawConnection:
    """One keep-alive HTTP/1.1 connection speaking just enough protocol for POST /search.

    On two shared cores the load generator's own CPU is taken from the server: httpx spent ~3 ms of
    CPU per request here, more than the server's funnel search, so the default client is this one
    (--client httpx for the library client).
    """

    def __init__(self, url: str) -> None:
        self.host, self.port = url.removeprefix("http://").split(":")

    async def __aenter__(self) -> RawConnection:
        self.reader, self.writer = await asyncio.open_connection(self.host, int(self.port))
        return self

    async def __aexit__(self, *exc) -> None:
        self.writer.close()

    async def post(self, body: bytes) -> tuple[int, bytes]:
        self.writer.write(b"POST /search HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                          % (self.host.encode(), len(body)) + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        return status, await self.reader.readexactly(length)


class HttpxConnection:
    """The same interface over httpx (one client per worker, so one keep-alive connection each)."""

    def __init__(self, url: str) -> None:
        self.client = httpx.AsyncClient(base_url=url, timeout=60)

    async def __aenter__(self) -> HttpxConnection:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.client.aclose()

    async def post(self, body: bytes) -> tuple[int, bytes]:
        response = await self.client.post("/search", content=body, headers={"content-type": "application/json"})
        return response.status_code, response.content


async def load(url: str, bodies: list[bytes], concurrency: int, n_requests: int, time_cap: float, client: str = "raw") -> dict:
    """Send up to ``n_requests`` requests (bodies reused round-robin) from ``concurrency`` workers, at most ``time_cap`` s."""
    latencies: list[float] = []
    errors = 0
    ids: dict[int, list[int]] = {}
    counter = iter(range(n_requests))
    deadline = time.perf_counter() + time_cap
    connection = RawConnection if client == "raw" else HttpxConnection

    async def worker() -> None:
        nonlocal errors
        async with connection(url) as conn:
            for i in counter:
                if time.perf_counter() > deadline:
                    return
                start = time.perf_counter()
                try:
                    status, content = await conn.post(bodies[i % len(bodies)])
                except (OSError, asyncio.IncompleteReadError, httpx.HTTPError):
                    status, content = 0, b""
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    errors += 1
                    if status == 0:
                        return  # the connection is gone
                elif i < len(bodies):
                    ids[i] = json.loads(content)["ids"][0]

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {"concurrency": concurrency, "latencies": np.array(latencies), "errors": errors, "seconds": elapsed, "ids": ids}


def recall_of(ids: dict[int, list[int]], exact_ids: np.ndarray) -> float:
    rows = sorted(ids)
    return float(knn_recall_at_k(np.array([ids[i] for i in rows]), exact_ids[rows], K).mean()) if rows else float("nan")


def merge(parts: list[dict]) -> dict:
    """One row from several rounds of :func:`load` at the same concurrency."""
    latencies = np.concatenate([p["latencies"] for p in parts]) * 1000
    seconds = sum(p["seconds"] for p in parts)
    ids = {i: found for p in parts for i, found in p["ids"].items()}
    return {"concurrency": parts[0]["concurrency"], "requests": len(latencies), "errors": sum(p["errors"] for p in parts),
            "seconds": seconds, "qps": len(latencies) / seconds, "p50_ms": float(np.percentile(latencies, 50)),
            "p95_ms": float(np.percentile(latencies, 95)), "p99_ms": float(np.percentile(latencies, 99)), "ids": ids}


def serve_rows(servers: dict[str, str], bodies: list[bytes], exact_ids: np.ndarray, args) -> list[dict]:
    """Both servers at each concurrency, in --rounds alternating rounds (the machine's load drifts)."""
    for url in servers.values():
        asyncio.run(load(url, bodies, 4, min(50, args.requests), 30, args.client))  # warm-up (first-touch pages, caches)
    rows = []
    for concurrency in args.concurrency:
        parts: dict[str, list[dict]] = {name: [] for name in servers}
        for _ in range(args.rounds):
            for name, url in servers.items():
                parts[name].append(asyncio.run(load(url, bodies, concurrency, args.requests // args.rounds,
                                                    args.time_cap / args.rounds, args.client)))
        for name in servers:
            row = merge(parts[name])
            row["knn_recall@10"] = recall_of(row.pop("ids"), exact_ids)
            rows.append({"server": name, **row})
            logger.info("%s c=%d: %.1f QPS, p50 %.2f ms, p99 %.2f ms, %d errors, recall %.4f", name, concurrency, row["qps"],
                        row["p50_ms"], row["p99_ms"], row["errors"], row["knn_recall@10"])
    return rows


def soak_row(process: subprocess.Popen, url: str, bodies: list[bytes], args) -> dict:
    before, anon_before = rss_mib(process.pid), rss_mib(process.pid, "RssAnon")
    row = merge([asyncio.run(load(url, bodies, 8, 10**9, args.soak_seconds, args.client))])
    after, anon_after = rss_mib(process.pid), rss_mib(process.pid, "RssAnon")
    soak = {"seconds": row["seconds"], "requests": row["requests"], "errors": row["errors"], "qps": row["qps"],
            "rss_before_mib": before, "rss_after_mib": after, "rss_growth": after / before - 1,
            "rss_anon_before_mib": anon_before, "rss_anon_after_mib": anon_after}
    logger.info("soak: %s", soak)
    return soak


def qdrant_rows(index_dir: Path, workdir: Path, queries: np.ndarray, funnel, funnel_ids: np.ndarray, exact_ids: np.ndarray,
                hnsw_ef: int) -> list[dict]:
    from mrl.retrieval.qdrant import QdrantFunnel, export_to_qdrant

    index = FunnelIndex.load(index_dir, mmap=True)
    start = time.perf_counter()
    stages = sorted({index.shortlist_dim, index.dim} | {d for d, _ in funnel})  # every stage of the tuned funnel
    export_to_qdrant(index_dir, workdir / "qdrant", "bench", stages=stages, progress=True)
    logger.info("exported to embedded Qdrant in %.1f s", time.perf_counter() - start)
    rows = []
    with QdrantFunnel(workdir / "qdrant", "bench") as qdrant:
        variants = [("FunnelIndex (in process)", lambda q: index.search(q, K, funnel)[1]),
                    ("Qdrant exact", lambda q: qdrant.search(q, K, funnel, exact=True)[1]),
                    (f"Qdrant HNSW ef={hnsw_ef}", lambda q: qdrant.search(q, K, funnel, exact=False, hnsw_ef=hnsw_ef)[1])]
        for _, search in variants:
            search(queries[:10])  # warm-up
        times = {name: [] for name, _ in variants}
        found = {name: np.empty((len(queries), K), dtype=np.int64) for name, _ in variants}
        for i in range(len(queries)):  # one query at a time, variants interleaved
            for name, search in variants:
                t = time.perf_counter()
                found[name][i] = search(queries[i : i + 1])[0]
                times[name].append(time.perf_counter() - t)
    for name, _ in variants:
        same = np.mean([set(a) == set(b) for a, b in zip(found[name], funnel_ids)])
        rows.append({"backend": name, "ms_per_query_p50": 1000 * float(np.median(times[name])),
                     "ms_per_query_mean": 1000 * float(np.mean(times[name])), "same_top10_as_funnelindex": float(same),
                     "knn_recall@10": float(knn_recall_at_k(found[name], exact_ids, K).mean())})
        logger.info("%s", rows[-1])
    return rows


def table(rows: list[dict], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f"{row[k]:.4g}" if isinstance(row[k], float) else str(row[k]) for k in keys) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", type=Path, help=".npz with X [N, D] (from mrl embed); default: synthetic")
    parser.add_argument("--queries", type=Path, help=".npz with X [Q, D] queries (with --database)")
    parser.add_argument("--n", type=int, default=100_000, help="synthetic database size")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--n-queries", type=int, default=1000, help="distinct query vectors (requests reuse them)")
    parser.add_argument("--tune-queries", type=int, default=200)
    parser.add_argument("--target-recall", type=float, default=0.99)
    parser.add_argument("--concurrency", type=lambda s: [int(c) for c in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=1000, help="requests per server and concurrency level")
    parser.add_argument("--time-cap", type=float, default=30.0, help="seconds per server and concurrency level at most")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per concurrency level")
    parser.add_argument("--soak-seconds", type=float, default=120.0)
    parser.add_argument("--workers", type=int, default=None, help="server search threads (default: CPU count)")
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw", help="load generator (see RawConnection)")
    parser.add_argument("--hnsw-ef", type=int, default=128)
    parser.add_argument("--qdrant-queries", type=int, default=300)
    parser.add_argument("--skip-qdrant", action="store_true")
    parser.add_argument("--store", choices=["memory", "mmap"], default="memory",
                        help="mmap: the data go to a float16 .npy in chunks, both servers map their float16 vectors "
                             "(the funnel holds only its 16-dim shortlist, the exact server float16 codes): the 1M x 2048 setting")
    parser.add_argument("--tune-max-length", type=int, default=2048, help="longest first-stage shortlist the funnel tuner tries")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="synthetic data: keep the float16 database and its exact top-k here (benchmarks/synthetic_cache.py) "
                             "and reuse them, size and sha256 checked, in later runs")
    parser.add_argument("--tmp-dir", type=Path, default=None, help="where the data and index folders are written (default: system temp)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_load.json"))
    args = parser.parse_args()
    if args.cache_dir is not None and (args.database or args.store != "mmap"):
        parser.error("--cache-dir holds synthetic float16 data: use it with --store mmap and without --database")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    faiss.omp_set_num_threads(1)  # single-query timings in this process, like mrl serve's default --intra-op-threads
    torch.set_num_threads(1)

    workdir = Path(tempfile.mkdtemp(prefix="serve_load.", dir=args.tmp_dir))
    try:
        if args.database:
            database = load_npz(args.database, required=("X",))["X"].astype(np.float32)
            all_queries = load_npz(args.queries, required=("X",))["X"].astype(np.float32)
            tune, queries = all_queries[: args.tune_queries], all_queries[args.tune_queries : args.tune_queries + args.n_queries]
            data = f"{args.database} ({database.shape[0]} x {database.shape[1]}), queries {args.queries}"
            if args.store == "mmap":
                database = write_float16(workdir / "database.npy", [database], database.shape)
        else:
            shape = (args.dim, args.clusters, 0)
            queries = synthetic(args.n_queries, *shape, stream=1)
            tune = synthetic(args.tune_queries, *shape, stream=2)
            if args.cache_dir is not None:
                database = cached_synthetic(args.cache_dir, args.n, *shape, stream=0)
            elif args.store == "mmap":
                database = write_float16(workdir / "database.npy", synthetic_blocks(args.n, *shape, stream=0), (args.n, args.dim))
            else:
                database = synthetic(args.n, *shape, stream=0)
            data = f"synthetic {args.n} x {args.dim} ({args.clusters} clusters)"
        logger.info("data: %s (store %s)", data, args.store)
        if args.cache_dir is not None and not args.database:
            exact_ids = cached_ground_truth(args.cache_dir, database, queries, K)[1]
            tune_exact = cached_ground_truth(args.cache_dir, database, tune, K)[1]
        else:
            exact_ids = exact_search(database, queries, K, metric="cosine")[1]
            tune_exact = None
        # mmap: the full vectors are float16 on disk for both servers; the exact one scans FAISS's
        # float16 codes of all D dims (half of IndexFlat's RAM) and re-scores its top k in float,
        # which is exact over the stored vectors.
        dtype = "float16" if args.store == "mmap" else "float32"
        funnel_index = FunnelIndex(database, metric="cosine", shortlist_dim=16, dtype=dtype)
        start = time.perf_counter()
        # The grid's deepest shortlists (n_1 up to 2048, each shape) are what tuning time goes to at 1M;
        # --tune-max-length bounds them.
        candidates = candidate_funnels(funnel_index.dim, 16, funnel_index.ntotal, K, max_length=args.tune_max_length)
        tuner = funnel_index.tune(tune, k=K, target_recall=args.target_recall, candidates=candidates, exact_ids=tune_exact)
        funnel = funnel_index.funnel
        logger.info("tuned funnel %s (kNN-recall@10 on tuning queries %.4f) in %.0f s, %d candidates measured:\n%s", format_funnel(funnel),
                    tuner.best_["knn_recall"], time.perf_counter() - start, len(tuner.results_), tuner.summary())
        funnel_ids = funnel_index.search(queries, K, funnel)[1]
        funnel_index.save(workdir / "funnel")
        del funnel_index
        exact_encoding = "float16" if args.store == "mmap" else "float32"
        exact = FunnelIndex(database, metric="cosine", shortlist_dim=database.shape[1], dtype=dtype, encoding=exact_encoding)
        if exact_encoding == "float16":
            exact.funnel = [(exact.dim, 4 * K), (exact.dim, K)]  # re-score 4k in float: float16 codes may swap near-ties at rank k
        exact.save(workdir / "exact")
        del exact
        dim = database.shape[1]
        del database
        (workdir / "database.npy").unlink(missing_ok=True)  # the cache's file (--cache-dir) stays for the next run
        bodies = [json.dumps({"vectors": [q.tolist()], "k": K}).encode() for q in queries]

        funnel_name, exact_name = "funnel " + format_funnel(funnel), f"exact {dim}-dim"
        processes = {}
        memory = {}
        try:  # both at once, so rounds can alternate: ~3 GB at 100k x 2048 in RAM (vectors + the exact FAISS copy)
            for name, folder in ((funnel_name, "funnel"), (exact_name, "exact")):
                processes[name] = start_server(workdir / folder, args.workers, args.store)
            rows = serve_rows({name: url for name, (_, url) in processes.items()}, bodies, exact_ids, args)
            memory = {name: {"rss_mib": rss_mib(p.pid), "rss_anon_mib": rss_mib(p.pid, "RssAnon")} for name, (p, _) in processes.items()}
            logger.info("server memory after the load: %s", memory)
            statuses = {exact_name: stop_server(processes.pop(exact_name)[0])}
            soak = soak_row(*processes[funnel_name], bodies, args) if args.soak_seconds > 0 else {}
            statuses[funnel_name] = stop_server(processes.pop(funnel_name)[0])
        finally:
            for process, _ in processes.values():
                process.kill()
        if any(statuses.values()):
            raise RuntimeError(f"a server did not exit 0 after SIGTERM: {statuses}")
        ratios = {}
        for c in args.concurrency:
            funnel_row = next(r for r in rows if r["concurrency"] == c and r["server"].startswith("funnel"))
            exact_row = next(r for r in rows if r["concurrency"] == c and r["server"].startswith("exact"))
            ratios[c] = funnel_row["qps"] / exact_row["qps"]
        qdrant = [] if args.skip_qdrant else qdrant_rows(workdir / "funnel", workdir, queries[: args.qdrant_queries], funnel,
                                                         funnel_ids[: args.qdrant_queries], exact_ids[: args.qdrant_queries], args.hnsw_ef)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    command = "python " + " ".join(sys.argv)
    report = [f"data: {data}; k={K}; {os.cpu_count()} CPUs shared by server and {args.client} client; command: {command}",
              table(rows, ["server", "concurrency", "requests", "errors", "qps", "p50_ms", "p95_ms", "p99_ms", "knn_recall@10"]),
              "funnel / exact QPS: " + ", ".join(f"c={c}: {r:.1f}x" for c, r in ratios.items())]
    report.append("server memory after the load (MiB): " + "; ".join(
        f"{name}: RSS {m['rss_mib']:.0f}, anonymous {m['rss_anon_mib']:.0f}" for name, m in memory.items()))
    if soak:
        report.append(f"soak {soak['seconds']:.0f} s at c=8: {soak['requests']} requests, {soak['errors']} errors, RSS "
                      f"{soak['rss_before_mib']:.0f} -> {soak['rss_after_mib']:.0f} MiB ({100 * soak['rss_growth']:+.2f}%), "
                      f"anonymous {soak['rss_anon_before_mib']:.0f} -> {soak['rss_anon_after_mib']:.0f} MiB")
    if qdrant:
        report.append(table(qdrant, ["backend", "ms_per_query_p50", "ms_per_query_mean", "same_top10_as_funnelindex", "knn_recall@10"]))
    print("\n\n".join(report))
    write_json(args.out, {"data": data, "command": command, "funnel": format_funnel(funnel), "store": args.store, "rows": rows,
                          "qps_ratio": ratios, "memory": memory, "soak": soak, "qdrant": qdrant})


if __name__ == "__main__":
    main()
