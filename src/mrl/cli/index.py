"""``mrl index build | search | tune | evaluate``: the funnel index from the command line (MRL section 4.3)."""

from __future__ import annotations

import os
from pathlib import Path

import click
import numpy as np

from mrl.errors import MRLError
from mrl.validation import check_float, check_int, click_check, split_numbers
from mrl.io import atomic_write_text, load_npz, save_npz, write_json



def _load_queries(path: str, dtype: str = "float32") -> tuple[np.ndarray, np.ndarray | None]:
    """X [N, d] and optional y [N] of an .npz, refused unless X is a non-empty finite float matrix
    whose values fit ``dtype`` (a value past float16's range would become inf in the index) and y,
    when present, holds one integer label per row of X."""
    from mrl.retrieval._vectors import check_labels

    data = load_npz(path, required=("X",))
    x = data["X"]
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating) or x.shape[0] == 0 or x.shape[1] == 0:
        raise MRLError(f"{path}: X must be a non-empty float matrix [N, d], got shape {x.shape} and dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise MRLError(f"{path}: X contains NaN or infinite values")
    # Compared as numpy scalars, which promote to the wider type; a Python float would be cast to
    # X's dtype (NEP 50), and float32's maximum overflows float16 with a RuntimeWarning.
    limit, peak = np.finfo(dtype).max, np.abs(x).max()
    if peak > limit:
        raise MRLError(f"{path}: X holds values up to {peak:.3g}, beyond what {dtype} can store ({limit:.3g})")
    labels = data.get("y")
    if labels is not None:
        try:
            labels = check_labels(labels, x.shape[0])  # the check build applies to stored labels
        except MRLError as exc:
            raise MRLError(f"{path}: y {exc}") from None
    return x, labels


def _split_configurations(option: str, value: str | None) -> list[str] | None:
    """The entries of a ';'-separated option, or None when it was not given; given but empty is refused."""
    if value is None:
        return None
    entries = [entry.strip() for entry in value.split(";") if entry.strip()]
    if not entries:
        raise MRLError(f"{option} must hold at least one ';'-separated entry, got {value!r}")
    return entries


def _default_sibling(path: str, suffix: str) -> Path:
    """``path`` with ``suffix`` added to its last part; '.' and '..' are made absolute first, as they
    name no folder of their own (a symbolic link is kept, so the output lands beside the link)."""
    named = Path(path)
    if named.name in ("", ".."):
        named = Path(os.path.abspath(named))
    if not named.name:
        raise MRLError(f"cannot derive a default output beside {path!r} (the filesystem root); give one explicitly")
    return named.with_name(named.name + suffix)


def _backend_options(command):
    """--backend faiss|qdrant and where the Qdrant collection lives (added to search and evaluate)."""
    options = [
        click.option("--backend", type=click.Choice(["faiss", "qdrant"]), default="faiss", show_default=True,
                     help="faiss: the index directory itself; qdrant: a collection made by `mrl index export`."),
        click.option("--qdrant-path", type=click.Path(file_okay=False), default=None, help="Folder of embedded Qdrant collections."),
        click.option("--qdrant-url", default=None, help="URL of a Qdrant server or cluster, e.g. http://localhost:6333."),
        click.option("--api-key-file", type=click.Path(dir_okay=False), default=None, help="File holding the Qdrant API key (with --qdrant-url)."),
        click.option("--collection", default=None, help="Qdrant collection name (with --backend qdrant)."),
        click.option("--hnsw", is_flag=True, help="Qdrant: shortlist through the engine's HNSW graph instead of exact search."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


# An API key is a token of a few hundred bytes at most; a larger file is the wrong file.
API_KEY_FILE_MAX_BYTES = 64 * 1024


def _read_api_key(api_key_file: str) -> str:
    """The key in ``api_key_file``: printable UTF-8 text, surrounding whitespace removed. The key
    itself never appears in a message."""
    path = Path(api_key_file)
    if not path.is_file():
        raise MRLError(f"--api-key-file must be a file holding the Qdrant API key, got {api_key_file!r} (not found or not a file)")
    try:
        with open(path, "rb") as f:
            raw = f.read(API_KEY_FILE_MAX_BYTES + 1)  # bounded: the file may grow or lie about its size
    except OSError as exc:
        raise MRLError(f"--api-key-file {api_key_file!r} cannot be read ({exc.strerror})") from None
    if len(raw) > API_KEY_FILE_MAX_BYTES:
        raise MRLError(f"--api-key-file {api_key_file!r} is larger than {API_KEY_FILE_MAX_BYTES} bytes; it must hold only the API key")
    try:
        key = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise MRLError(f"--api-key-file {api_key_file!r} is not UTF-8 text; it must hold only the API key") from None
    if not key:
        raise MRLError(f"--api-key-file {api_key_file!r} is empty; it must hold the API key")
    if not key.isprintable():
        raise MRLError(f"--api-key-file {api_key_file!r} holds control characters or several lines; it must hold only the API key")
    return key


def _qdrant_location(path: str | None, url: str | None, api_key_file: str | None) -> tuple[str, str | None]:
    if (path is None) == (url is None):
        raise MRLError("give exactly one of --path/--qdrant-path (embedded Qdrant) and --url/--qdrant-url (a Qdrant server)")
    if api_key_file is not None and url is None:
        raise MRLError("--api-key-file goes with a Qdrant server URL")
    api_key = None if api_key_file is None else _read_api_key(api_key_file)
    return (path if url is None else url), api_key


def _open_qdrant(path: str | None, url: str | None, api_key_file: str | None, collection: str | None, index_dir: str):
    """The collection, refused unless it was exported from ``index_dir`` (whose ids and labels score its results)."""
    from mrl.retrieval.qdrant import QdrantFunnel

    if collection is None:
        raise MRLError("--backend qdrant needs --collection NAME")
    location, api_key = _qdrant_location(path, url, api_key_file)
    return QdrantFunnel(location, collection, api_key=api_key, index_dir=index_dir)


@click.group("index")
def index_group() -> None:
    """Adaptive retrieval: build a funnel index over embeddings, search it, tune and evaluate funnels.

    Embedding files are .npz with float X [N, d] and optional int y [N] (as written by `mrl embed`).
    """


@index_group.command("build")
@click.argument("embeddings", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", required=True, type=click.Path(), help="Index directory to create.")
@click.option("--shortlist-dim", type=int, callback=click_check(check_int, min=1, max=1 << 16), default=16, show_default=True, help="Prefix size indexed by FAISS for the shortlist.")
@click.option("--shortlist", type=click.Choice(["flat", "hnsw", "ivf"]), default="flat", show_default=True,
              help="flat: scan every prefix; hnsw: graph search; ivf: inverted lists (AdANNS-IVF with --coarse-dim).")
@click.option("--encoding", type=click.Choice(["float32", "float16", "int8", "binary", "pq"]), default="float32", show_default=True,
              help="Codes of the shortlist prefix: float, scalar-quantised (float16, int8), sign bits (binary, Hamming) or product-quantised.")
@click.option("--metric", type=click.Choice(["cosine", "ip", "l2"]), default="cosine", show_default=True,
              help="cosine normalises every prefix; ip is the raw inner product; l2 the squared distance.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Storage of the full vectors (float16 halves memory).")
@click.option("--hnsw-m", type=int, callback=click_check(check_int, min=2, max=1024), default=32, show_default=True, help="HNSW graph degree M.")
@click.option("--ef-construction", type=int, callback=click_check(check_int, min=1, max=1 << 20), default=80, show_default=True, help="HNSW build beam width.")
@click.option("--ef-search", type=int, callback=click_check(check_int, min=1, max=1 << 20), default=128, show_default=True, help="HNSW search beam width.")
@click.option("--coarse-dim", type=int, default=None, help="ivf: prefix the lists are clustered and probed on [default: --shortlist-dim].")
@click.option("--nlist", type=int, default=None, help="ivf: number of lists [default: about 4 sqrt(N)].")
@click.option("--nprobe", type=int, callback=click_check(check_int, min=1, max=1 << 20), default=16, show_default=True, help="ivf: lists probed per query.")
@click.option("--pq-m", type=int, default=None, help="pq: sub-quantisers, dividing --shortlist-dim [default: half of it].")
@click.option("--pq-nbits", type=int, callback=click_check(check_int, min=1, max=16), default=8, show_default=True, help="pq: bits per sub-quantiser code.")
@click.option("--opq", is_flag=True, help="pq: learn an OPQ rotation first (flat and hnsw shortlists).")
@click.option("--overwrite", is_flag=True, help="Replace an existing index directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build(embeddings, out, shortlist_dim, shortlist, encoding, metric, dtype, hnsw_m, ef_construction, ef_search, coarse_dim, nlist,
          nprobe, pq_m, pq_nbits, opq, overwrite, quiet) -> None:
    """Build a funnel index from EMBEDDINGS (.npz with X and optional labels y) and save it to --out."""
    from mrl.artifacts import lock, prepare_output
    from mrl.retrieval import FunnelIndex

    prepare_output(out, "index", overwrite, inputs=[embeddings])
    vectors, labels = _load_queries(embeddings, dtype)
    index = FunnelIndex(vectors, metric=metric, shortlist_dim=shortlist_dim, shortlist=shortlist, hnsw_m=hnsw_m,
                        ef_construction=ef_construction, ef_search=ef_search, dtype=dtype, labels=labels, progress=not quiet,
                        encoding=encoding, coarse_dim=coarse_dim, nlist=nlist, nprobe=nprobe, pq_m=pq_m, pq_nbits=pq_nbits, opq=opq)
    with lock(out):
        index.save(out, overwrite=True)  # prepare_output allowed replacing it; the lock made the folder
    memory = index.memory_bytes()
    click.echo(f"wrote {out}: {index.ntotal} x {index.dim} {dtype}, {shortlist} {encoding} shortlist on {shortlist_dim} dims, "
               f"{memory['total'] / 2**20:.1f} MiB ({memory['shortlist'] / index.ntotal:.1f} shortlist bytes per vector), "
               f"built in {index.build_seconds:.1f} s")


@index_group.command("search")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("queries", type=click.Path(exists=True, dir_okay=False))
@click.option("--k", type=int, callback=click_check(check_int, min=1, max=1 << 20), default=10, show_default=True, help="Results per query.")
@click.option("--funnel", default=None, help="Stages as dim:shortlist_length pairs, e.g. 16:200,2048:10 (default: tuned or d1:200,D:k).")
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write scores [Q, k] and ids [Q, k] to this .npz.")
@click.option("--store", type=click.Choice(["memory", "mmap"]), default="memory", show_default=True,
              help="memory: read the full vectors; mmap: map them from disk, reading only the rows reranked.")
@click.option("--nprobe", type=int, callback=click_check(check_int, min=1, max=1 << 20), default=None,
              help="ivf: lists probed per query [default: the index's].")
@click.option("--ef-search", type=int, callback=click_check(check_int, min=1, max=1 << 20), default=None,
              help="hnsw: search beam width [default: the index's].")
@click.option("--shortlist-margin", type=float, default=None,
              help="Adaptive depth: rerank only stage-1 candidates scoring within this margin of the k-th best.")
@_backend_options
def search(index_dir, queries, k, funnel, out, store, nprobe, ef_search, shortlist_margin, backend, qdrant_path, qdrant_url, api_key_file,
           collection, hnsw) -> None:
    """Search INDEX_DIR with the vectors X of QUERIES (.npz); print cost and, with labels, accuracy."""
    from mrl.artifacts import prepare_output_file
    from mrl.metrics import retrieval_summary
    from mrl.retrieval import FunnelIndex, format_funnel, parse_funnel

    if out:
        prepare_output_file(out, inputs=[index_dir, queries])
    index = FunnelIndex.load(index_dir, store=store)
    x, y = _load_queries(queries)
    stages = None if funnel is None else parse_funnel(funnel)
    # Every result is computed before the output is written, and written before anything is
    # printed, so a refused input or a failed write leaves --out as it was and is the only output.
    if backend == "qdrant":
        with _open_qdrant(qdrant_path, qdrant_url, api_key_file, collection, index_dir) as qdrant:
            scores, ids = qdrant.search(x, k=k, funnel=stages, exact=not hnsw)
        lines = [f"searched {len(x)} queries on Qdrant {qdrant.collection_label}"]
    else:
        scores, ids, stats = index.search(x, k=k, funnel=stages, return_stats=True,
                                          nprobe=nprobe, ef_search=ef_search, shortlist_margin=shortlist_margin)
        lines = [f"funnel {format_funnel(stats.funnel)}: {stats.ms_per_query:.3f} ms/query, "
                 f"{stats.flops_per_query / 1e6:.3f} MFLOPs/query, {stats.mean_shortlist_length:.1f} candidates "
                 f"reranked per query over {stats.n_queries} queries"]
    if y is not None and index.labels is not None:
        summary = retrieval_summary(ids, y, index.labels, k=k)
        lines.append(", ".join(f"{key} {value:.4f}" for key, value in summary.items()))
    if out:
        save_npz(out, scores=scores, ids=ids)
        lines.append(f"wrote {out}")
    for line in lines:
        click.echo(line)


@index_group.command("tune")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("queries", type=click.Path(exists=True, dir_okay=False))
@click.option("--k", type=int, callback=click_check(check_int, min=1, max=1 << 20), default=10, show_default=True, help="Results per query compared with exact search.")
@click.option("--target-recall", type=float, callback=click_check(check_float, min=0, max=1), default=0.99, show_default=True, help="Required kNN-recall@k against exact full-dim search.")
@click.option("--max-queries", type=int, callback=click_check(check_int, min=1), default=1000, show_default=True, help="Tune on at most this many queries (the first ones).")
@click.option("--shortlists", default=None,
              help="Also choose the stage-1 structure among these ';'-separated kind:encoding:dim[:coarse_dim | :opq_niter][:name=value ...] "
                   "entries (e.g. 'flat:binary:64;hnsw:float32:16;ivf:int8:32:16;flat:opq:128:10', opq = pq after an OPQ rotation "
                   "learned in 10 rounds; names: coarse_dim, nlist, nprobe, hnsw_m, ef_construction, ef_search, pq_m, pq_nbits, "
                   "opq_niter, as in 'hnsw:int8:192:hnsw_m=48:ef_construction=200;ivf:pq:384:96:pq_m=48'), "
                   "or 'auto' for a default grid.")
@click.option("--max-ram-bytes-per-vector", type=float, default=None, help="RAM budget per vector (with --shortlists).")
@click.option("--max-ms-per-query", type=float, default=None, help="Latency budget (with --shortlists).")
@click.option("--repeats", type=int, callback=click_check(check_int, min=1, max=1000), default=3, show_default=True,
              help="Timed runs per point after a warm-up (median).")
@click.option("--store", type=click.Choice(["memory", "mmap"]), default="memory", show_default=True,
              help="Where the full vectors live while tuning; RAM per vector counts them only with memory.")
@click.option("--objective", type=click.Choice(["ms", "flops"]), default="ms", show_default=True,
              help="Cheapest funnel by measured ms/query or by theoretical FLOPs (without --shortlists; structures compare by ms).")
@click.option("--headroom", type=int, callback=click_check(check_int, min=0, max=64), default=0, show_default=True,
              help="Grid steps to spare: choose a funnel whose N next-shorter funnels (same stage dims) also meet the target, "
                   "so a target met by chance on QUERIES is not the pick.")
def tune(index_dir, queries, k, target_recall, max_queries, shortlists, max_ram_bytes_per_vector, max_ms_per_query, repeats, store,
         objective, headroom) -> None:
    """Pick the cheapest funnel meeting --target-recall on QUERIES (and with --shortlists the structure); save it as the default."""
    from mrl.artifacts import lock, prepare_output
    from mrl.retrieval import FunnelIndex, default_shortlists, parse_shortlists

    prepare_output(index_dir, "index", True)  # the index is rewritten in place: refuse a link or unlisted files before the work
    with lock(index_dir):
        index = FunnelIndex.load(index_dir, store=store)
        x, _ = _load_queries(queries)
        specs = None
        if shortlists is not None:
            specs = default_shortlists(index.dim, index.shortlist_dim) if shortlists.strip() == "auto" else parse_shortlists(shortlists)
        tuner = index.tune(x[:max_queries], k=k, target_recall=target_recall, shortlists=specs, repeats=repeats,
                           max_ram_bytes_per_vector=max_ram_bytes_per_vector, max_ms_per_query=max_ms_per_query, objective=objective,
                           headroom=headroom)
        index.save(index_dir, overwrite=True)
    click.echo(tuner.summary())
    if not tuner.target_met_:
        spare = f" with {headroom} grid steps to spare" if headroom else ""
        click.echo(f"no funnel reached knn_recall@{k} >= {target_recall}{spare}; kept the most accurate", err=True)
    chosen = f"{tuner.best_['shortlist']} shortlist, " if specs is not None else ""
    click.echo(f"chose {chosen}{tuner.best_['spec']} (knn_recall@{k} {tuner.best_['knn_recall']:.4f}, "
               f"{tuner.best_['mflops']:.3f} MFLOPs/query, {tuner.best_['ms_per_query']:.3f} ms/query); saved as the default of {index_dir}")


@index_group.command("evaluate")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("queries", type=click.Path(exists=True, dir_okay=False))
@click.option("--funnels", default=None,
              help="Semicolon-separated configurations: exact, exact:DIM or a funnel like 16:200,2048:10 "
                   "(default: exact, exact at the shortlist dim, d1:200,D:k, the doubling cascade, any tuned funnel).")
@click.option("--k", type=int, callback=click_check(check_int, min=1, max=1 << 20), default=10, show_default=True, help="Cut-off of every metric.")
@click.option("--out-dir", type=click.Path(file_okay=False), default=None,
              help="Where to write evaluation.json, evaluation.md and the mAP-vs-MFLOPs PNG (default: INDEX_DIR-evaluation).")
@_backend_options
def evaluate(index_dir, queries, funnels, k, out_dir, backend, qdrant_path, qdrant_url, api_key_file, collection, hnsw) -> None:
    """Compare configurations on QUERIES: mAP@k, P@k, recall@k, top-1, kNN-recall@k, MFLOPs and ms per query."""
    from mrl.artifacts import new_artifact, prepare_output
    from mrl.retrieval import FunnelIndex, evaluate_configurations, format_table, plot_accuracy_vs_flops

    configs = _split_configurations("--funnels", funnels)
    out = Path(out_dir) if out_dir else _default_sibling(index_dir, "-evaluation")
    # The folder is an experiment artifact: an earlier evaluation is replaced, any other folder refused.
    prepare_output(out, "experiment", True, inputs=[index_dir, queries])
    index = FunnelIndex.load(index_dir)
    x, y = _load_queries(queries)
    if backend == "qdrant":
        from mrl.retrieval.qdrant import evaluate_on_qdrant

        with _open_qdrant(qdrant_path, qdrant_url, api_key_file, collection, index_dir) as qdrant:
            rows = evaluate_on_qdrant(qdrant, index, x, y, configs, k=k, exact=not hnsw)
    else:
        rows = evaluate_configurations(index, x, y, configs, k=k)
    table = format_table(rows)
    click.echo(table)
    meta = {"command": "index evaluate"}
    with new_artifact(out, "experiment", True, inputs=[index_dir, queries], meta=meta) as tmp:
        write_json(tmp / "evaluation.json", {"index": str(index_dir), "queries": str(queries), "k": k, "rows": rows})
        atomic_write_text(tmp / "evaluation.md", table + "\n")
        if f"map@{k}" in rows[0] and "mflops" in rows[0]:
            plot_accuracy_vs_flops(tmp / f"map{k}_vs_mflops.png", rows, metric=f"map@{k}",
                                   title=f"mAP@{k} vs cost ({Path(os.path.abspath(index_dir)).name})")
    click.echo(f"wrote {out}")


@index_group.command("info")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of lines.")
def info(index_dir, as_json) -> None:
    """Describe INDEX_DIR: size, shortlist settings, RAM and disk bytes per vector, build time, default funnel."""
    import json

    from mrl.retrieval import FunnelIndex

    index = FunnelIndex.load(index_dir, store="mmap")
    facts = index.describe()
    facts.pop("store")
    facts.pop("ram_bytes_per_vector")  # of the mmap store opened here; both stores are listed below
    facts["ram_bytes_per_vector_memory_store"] = facts["shortlist_bytes_per_vector"] + facts["vector_bytes_per_vector"]
    facts["ram_bytes_per_vector_mmap_store"] = facts["shortlist_bytes_per_vector"]
    disk = sum(p.stat().st_size for p in Path(index_dir).iterdir() if p.is_file() and not p.is_symlink())
    facts["disk_bytes_per_vector"] = disk / max(index.ntotal, 1)
    if as_json:
        click.echo(json.dumps(facts))
        return
    for key, value in facts.items():
        click.echo(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")


@index_group.command("export")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--to", "target", type=click.Choice(["qdrant"]), required=True, help="Vector engine to export to.")
@click.option("--path", "qdrant_path", type=click.Path(file_okay=False), default=None,
              help="Folder of embedded Qdrant collections (Qdrant's engine in this process, no server).")
@click.option("--url", "qdrant_url", default=None, help="URL of a Qdrant server or cluster, e.g. http://localhost:6333.")
@click.option("--api-key-file", type=click.Path(dir_okay=False), default=None, help="File holding the Qdrant API key (with --url).")
@click.option("--collection", required=True, help="Collection name (letters, digits, '-', '_').")
@click.option("--stages", default=None, help="Prefix sizes stored as named vectors m<size>, e.g. 16,64,2048 (default: shortlist dim and full dim).")
@click.option("--quantization", type=click.Choice(["none", "int8", "binary"]), default="none", show_default=True,
              help="Qdrant quantization of every named vector.")
@click.option("--batch", type=click.IntRange(min=1), default=1024, show_default=True, help="Points per upsert.")
@click.option("--shards", type=click.IntRange(min=1), default=None, help="Shards of a new collection on a Qdrant cluster (with --url).")
@click.option("--replicas", type=click.IntRange(min=1), default=None, help="Replication factor of a new collection on a Qdrant cluster (with --url).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def export(index_dir, target, qdrant_path, qdrant_url, api_key_file, collection, stages, quantization, batch, shards, replicas, quiet) -> None:
    """Export INDEX_DIR to a Qdrant collection: one named vector per stage, ids = row numbers, labels as payload.

    Re-running resumes (ids already present are skipped); a collection with another layout is refused.
    """
    from mrl.retrieval.qdrant import export_to_qdrant

    location, api_key = _qdrant_location(qdrant_path, qdrant_url, api_key_file)
    message = f"--stages must be comma-separated prefix sizes such as 16,64,2048, got {stages!r}"
    sizes = None if stages is None else split_numbers(stages, int, message)
    result = export_to_qdrant(index_dir, location, collection, stages=sizes, quantization=quantization, batch=batch,
                              api_key=api_key, progress=not quiet, shards=shards, replicas=replicas)
    click.echo(f"exported {result['written']} points to {target} collection {collection} "
               f"({result['skipped']} already present, {result['points']} in all)")


COMMANDS = [index_group]
