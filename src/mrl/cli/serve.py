"""``mrl serve``: funnel search over HTTP (FastAPI + uvicorn, extra ``mrl[serve]``)."""

from __future__ import annotations

import click

from mrl.errors import MRLError
from mrl.serve import DEFAULT_MAX_CANDIDATES


@click.command("serve")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port (0: an ephemeral one, printed at start).")
@click.option("--funnel", default=None, help="Funnel for searches that name none, e.g. 16:200,2048:10 (default: the index's saved default).")
@click.option("--max-body-mb", type=click.FloatRange(min=0, min_open=True), default=16, show_default=True, help="Larger request bodies get 413.")
@click.option("--max-candidates", type=click.IntRange(min=1), default=DEFAULT_MAX_CANDIDATES, show_default=True,
              help="Largest queries x first-stage shortlist length one search request may ask for; larger get 413.")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None,
              help="File holding the bearer token that POST /reload requires (without it /reload answers 403).")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Threads running searches in parallel (default: the CPU count).")
@click.option("--intra-op-threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="OpenMP threads of FAISS and torch inside one search (more helps only large batches on an idle machine).")
@click.option("--store", type=click.Choice(["memory", "mmap"]), default="memory", show_default=True,
              help="Full vectors read into RAM, or memory-mapped from the index's vectors.npy (the process then holds only the shortlist).")
def serve_command(index_dir, host, port, funnel, max_body_mb, max_candidates, token_file, workers, intra_op_threads, store) -> None:
    """Serve INDEX_DIR (from `mrl index build`): POST /search, GET /health, /info, /metrics, POST /reload.

    SIGTERM stops accepting, finishes requests in flight and exits 0.
    """
    try:
        from mrl.serve.server import serve
        import fastapi, orjson, prometheus_client, uvicorn  # noqa: F401, E401  (fail here, naming the extra)
    except ImportError as exc:
        raise MRLError(f"mrl serve needs {exc.name}: pip install \"mrl[serve]\"") from None
    serve(index_dir, host=host, port=port, funnel=funnel, max_body_mb=max_body_mb, token_file=token_file, workers=workers,
          intra_op_threads=intra_op_threads, store=store, max_candidates=max_candidates)


COMMANDS = [serve_command]
