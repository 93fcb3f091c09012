"""``mrl index build | search | tune | evaluate``: the funnel index from the command line (MRL section 4.3)."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from mrl.errors import MRLError
from mrl.validation import check_float, check_int, check_seed, click_check
from mrl.io import atomic_write_text, load_npz, save_npz, write_json



def _load_queries(path: str, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray | None]:
    """X [N, d] and optional y [N] of an .npz, refused unless X is a non-empty finite float matrix
    whose values fit ``dtype`` (a value past float16's range would become inf in the index)."""
    data = load_npz(path, required=("X",))
    x = data["X"]
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating) or x.shape[0] == 0 or x.shape[1] == 0:
        raise MRLError(f"{path}: X must be a non-empty float matrix [N, d], got shape {x.shape} and dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise MRLError(f"{path}: X contains NaN or infinite values")
    limit = float(np.finfo(dtype).max)
    if np.abs(x).max() > limit:
        raise MRLError(f"{path}: X holds values up to {np.abs(x).max():.3g}, beyond what {dtype} can store ({limit:.3g})")
    return x, data.get("y")


@click.group("index")
def index_group() -> None:
    """Adaptive retrieval: build a funnel index over embeddings, search it, tune and evaluate funnels.

    Embedding files are .npz with float X [N, d] and optional int y [N] (as written by `mrl embed`).
    """


@index_group.command("build")
@click.argument("embeddings", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(), help="Index directory to create.")
@click.option("--shortlist-dim", type=int, callback=click_check(check_int, min=1, max=1 << 16), default=16, show_default=True, help="Prefix size indexed by FAISS for the shortlist.")
@click.option("--shortlist", type=click.Choice(["flat", "hnsw"]), default="flat", show_default=True,
              help="flat: exact search over the prefix; hnsw: approximate graph search.")
@click.option("--metric", type=click.Choice(["cosine", "ip", "l2"]), default="cosine", show_default=True,
              help="cosine normalises every prefix; ip is the raw inner product; l2 the squared distance.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Storage of the full vectors (float16 halves memory).")
@click.option("--hnsw-m", type=int, callback=click_check(check_int, min=2, max=1024), default=32, show_default=True, help="HNSW graph degree M.")
@click.option("--ef-construction", type=int, callback=click_check(check_int, min=1, max=1 << 20), default=80, show_default=True, help="HNSW build beam width.")
@click.option("--ef-search", type=int, callback=click_check(check_int, min=1, max=1 << 20), default=128, show_default=True, help="HNSW search beam width.")
@click.option("--overwrite", is_flag=True, help="Replace an existing index directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build(embeddings, out, shortlist_dim, shortlist, metric, dtype, hnsw_m, ef_construction, ef_search, overwrite, quiet) -> None:
    """Build a funnel index from EMBEDDINGS (.npz with X and optional labels y) and save it to --out."""
    from mrl.artifacts import lock, prepare_output
    from mrl.retrieval import FunnelIndex

    prepare_output(out, "index", overwrite, inputs=[embeddings])
    vectors, labels = _load_queries(embeddings, dtype)
    index = FunnelIndex(vectors, metric=metric, shortlist_dim=shortlist_dim, shortlist=shortlist, hnsw_m=hnsw_m,
                        ef_construction=ef_construction, ef_search=ef_search, dtype=dtype, labels=labels, progress=not quiet)
    with lock(out):
        index.save(out, overwrite=True)  # prepare_output allowed replacing it; the lock made the folder
    memory = index.memory_bytes()
    click.echo(f"wrote {out}: {index.ntotal} x {index.dim} {dtype}, {shortlist} shortlist on {shortlist_dim} dims, "
               f"{memory['total'] / 2**20:.1f} MiB")


@index_group.command("search")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("queries", type=click.Path(exists=True, dir_okay=False))
@click.option("--k", type=int, callback=click_check(check_int, min=1, max=1 << 20), default=10, show_default=True, help="Results per query.")
@click.option("--funnel", default=None, help="Stages as dim:shortlist_length pairs, e.g. 16:200,2048:10 (default: tuned or d1:200,D:k).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write scores [Q, k] and ids [Q, k] to this .npz.")
@click.option("--mmap", is_flag=True, help="Memory-map the stored vectors instead of reading them into memory.")
def search(index_dir, queries, k, funnel, out, mmap) -> None:
    """Search INDEX_DIR with the vectors X of QUERIES (.npz); print cost and, with labels, accuracy."""
    from mrl.artifacts import prepare_output_file
    from mrl.metrics import retrieval_summary
    from mrl.retrieval import FunnelIndex, format_funnel, parse_funnel

    if out:
        prepare_output_file(out, inputs=[index_dir, queries])
    index = FunnelIndex.load(index_dir, mmap=mmap)
    x, y = _load_queries(queries)
    scores, ids = index.search(x, k=k, funnel=None if funnel is None else parse_funnel(funnel))
    stats = index.last_search
    if out:  # written before anything is printed, so a failed write is the only output
        save_npz(out, scores=scores, ids=ids)
    click.echo(f"funnel {format_funnel(stats['funnel'])}: {stats['ms_per_query']:.3f} ms/query, "
               f"{stats['flops_per_query'] / 1e6:.3f} MFLOPs/query over {stats['n_queries']} queries")
    if y is not None and index.labels is not None:
        summary = retrieval_summary(ids, y, index.labels, k=k)
        click.echo(", ".join(f"{key} {value:.4f}" for key, value in summary.items()))
    if out:
        click.echo(f"wrote {out}")


@index_group.command("tune")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("queries", type=click.Path(exists=True, dir_okay=False))
@click.option("--k", type=int, callback=click_check(check_int, min=1, max=1 << 20), default=10, show_default=True, help="Results per query compared with exact search.")
@click.option("--target-recall", type=float, callback=click_check(check_float, min=0, max=1), default=0.99, show_default=True, help="Required kNN-recall@k against exact full-dim search.")
@click.option("--max-queries", type=int, callback=click_check(check_int, min=1), default=1000, show_default=True, help="Tune on at most this many queries (the first ones).")
def tune(index_dir, queries, k, target_recall, max_queries) -> None:
    """Pick the cheapest funnel meeting --target-recall on QUERIES and store it as the index's default."""
    from mrl.artifacts import lock
    from mrl.retrieval import FunnelIndex

    with lock(index_dir):
        index = FunnelIndex.load(index_dir)
        x, _ = _load_queries(queries)
        tuner = index.tune(x[:max_queries], k=k, target_recall=target_recall)
        index.save(index_dir, overwrite=True)
    click.echo(tuner.summary())
    if not tuner.target_met_:
        click.echo(f"no funnel reached knn_recall@{k} >= {target_recall}; kept the most accurate", err=True)
    click.echo(f"chose {tuner.best_['spec']} (knn_recall@{k} {tuner.best_['knn_recall']:.4f}, "
               f"{tuner.best_['mflops']:.3f} MFLOPs/query); saved as the default of {index_dir}")


@index_group.command("evaluate")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("queries", type=click.Path(exists=True, dir_okay=False))
@click.option("--funnels", default=None,
              help="Semicolon-separated configurations: exact, exact:DIM or a funnel like 16:200,2048:10 "
                   "(default: exact, exact at the shortlist dim, d1:200,D:k, the doubling cascade, any tuned funnel).")
@click.option("--k", type=int, callback=click_check(check_int, min=1, max=1 << 20), default=10, show_default=True, help="Cut-off of every metric.")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="Where to write evaluation.json, evaluation.md and the mAP-vs-MFLOPs PNG (default: INDEX_DIR-evaluation).")
def evaluate(index_dir, queries, funnels, k, out_dir) -> None:
    """Compare configurations on QUERIES: mAP@k, P@k, recall@k, top-1, kNN-recall@k, MFLOPs and ms per query."""
    from mrl.artifacts import new_artifact, prepare_output
    from mrl.retrieval import FunnelIndex, evaluate_configurations, format_table, plot_accuracy_vs_flops

    out = Path(out_dir) if out_dir else Path(index_dir).with_name(Path(index_dir).name + "-evaluation")
    # The folder is an experiment artifact: an earlier evaluation is replaced, any other folder refused.
    prepare_output(out, "experiment", True, inputs=[index_dir, queries])
    index = FunnelIndex.load(index_dir)
    x, y = _load_queries(queries)
    configs = None if funnels is None else [c.strip() for c in funnels.split(";") if c.strip()]
    rows = evaluate_configurations(index, x, y, configs, k=k)
    table = format_table(rows)
    click.echo(table)
    meta = {"command": "index evaluate"}
    with new_artifact(out, "experiment", True, inputs=[index_dir, queries], meta=meta) as tmp:
        write_json(tmp / "evaluation.json", {"index": str(index_dir), "queries": str(queries), "k": k, "rows": rows})
        atomic_write_text(tmp / "evaluation.md", table + "\n")
        if f"map@{k}" in rows[0]:
            plot_accuracy_vs_flops(tmp / f"map{k}_vs_mflops.png", rows, metric=f"map@{k}",
                                   title=f"mAP@{k} vs cost ({Path(index_dir).name})")
    click.echo(f"wrote {out}")


COMMANDS = [index_group]
