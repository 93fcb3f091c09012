"""``mrl adapt fit`` and ``mrl adapt apply``: a post-hoc Matryoshka adapter for frozen embeddings.

Embeddings come as ``.npz`` files (``mrl embed`` writes ``X`` [N, d] and ``y``); pairs for the
supervised mode as an ``.npz`` with ``queries`` and ``documents`` [P, d], row i of one relevant to
row i of the other. The adapter directory holds ``adapter.safetensors`` and ``config.json``.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from mrl.errors import MRLError
from mrl.validation import check_int, click_check

# Flag name -> FitConfig field; only flags given on the command line override --config.
_FIT_FIELDS = (
    "epochs", "batch_size", "lr", "weight_decay", "neighbours", "pairwise_weight", "neighbour_weight",
    "reconstruction_weight", "supervised_weight", "temperature", "seed",
)


def _matrix(path: Path, key: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    from mrl.io import load_npz

    arrays = load_npz(path)
    if key not in arrays:
        raise MRLError(f"{path} has no array {key!r}; it has {sorted(arrays)} (choose one with --key)")
    x = arrays[key]
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating):
        raise MRLError(f"{path}:{key} must be a float matrix [N, d], got shape {x.shape} and dtype {x.dtype}")
    return x, arrays


def _fit_config(ctx: click.Context, params: dict, config_path: str | None):
    from mrl.adapter import FitConfig
    from mrl.io import read_json

    given = {
        name: params[name] for name in _FIT_FIELDS
        if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)
    }
    base = {name: params[name] for name in _FIT_FIELDS}
    if config_path:
        saved = read_json(config_path)
        if isinstance(saved, dict) and saved.get("format") == "mrl-adapter":
            fit = saved.get("fit", {})  # a saved adapter's config.json: refit alike
            saved = fit.get("config", {}) if isinstance(fit, dict) else None
        if not isinstance(saved, dict):
            raise MRLError(f"{config_path} must hold a JSON object of fit settings")
        base.update(saved)
    base.update(given)
    return FitConfig.from_dict(base)


@click.group("adapt")
def adapt_group() -> None:
    """Make any embedding model Matryoshka: fit an adapter on its frozen embeddings, then apply it.

    After `mrl adapt apply`, the first m coordinates of each adapted embedding can be used on their
    own at every size m of the adapter's nesting (Matryoshka-Adaptor, Yoon et al. 2024).
    """


@adapt_group.command("fit")
@click.argument("embeddings", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Adapter directory to create.")
@click.option("--pairs", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Supervised mode: .npz with 'queries' and 'documents' [P, d], row i relevant to row i.")
@click.option("--key", default="X", show_default=True, help="Name of the embedding matrix in EMBEDDINGS.")
@click.option("--nesting", default=None, help="Comma-separated ascending prefix sizes (default 8,16,...,d).")
@click.option("--hidden-dim", type=int, callback=click_check(check_int, min=1, max=1 << 16), default=None, help="Width of the adapter's MLP (default d).")
@click.option("--linear/--no-linear", default=True, show_default=True,
              help="Include the zero-initialised linear path (a learned change of basis).")
@click.option("--epochs", type=int, default=20, show_default=True,
              help="Passes over the embeddings (or over the pairs in supervised mode).")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Rows (or pairs) per step.")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="AdamW learning rate.")
@click.option("--weight-decay", type=float, default=0.0, show_default=True, help="AdamW weight decay.")
@click.option("--neighbours", type=int, default=10, show_default=True,
              help="k of the top-k similarity term (0 turns it off).")
@click.option("--pairwise-weight", type=float, default=1.0, show_default=True, help="Weight of the pairwise-similarity term.")
@click.option("--neighbour-weight", type=float, default=1.0, show_default=True, help="Weight of the top-k similarity term.")
@click.option("--reconstruction-weight", type=float, default=0.1, show_default=True,
              help="Weight of ||f(e) - e||^2 at full size.")
@click.option("--supervised-weight", type=float, default=1.0, show_default=True, help="Weight of the ranking loss on --pairs.")
@click.option("--temperature", type=float, default=0.05, show_default=True, help="Temperature of the ranking loss.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the initial weights and the batch order.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, exists=True), default=None,
              help="JSON file of fit settings, or a saved adapter's config.json to fit alike; flags override it.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out directory.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def fit_command(
    ctx: click.Context, embeddings: Path, out: Path, pairs: Path | None, key: str, nesting: str | None,
    hidden_dim: int | None, linear: bool, config_path: str | None, overwrite: bool, quiet: bool, **params,
) -> None:
    """Fit an adapter on the frozen embeddings in EMBEDDINGS (.npz) and save it to --out.

    Without --pairs the adapter learns from the embeddings alone (it keeps, at every prefix size, the
    cosine similarities of the full embeddings to all items and to each item's nearest neighbours).
    With --pairs it also learns to rank each query's document first at every prefix size.
    """
    import torch

    from mrl.adapter import MatryoshkaAdapter, fit_adapter, fit_info
    from mrl.artifacts import prepare_output
    from mrl.nesting import parse_nesting

    inputs = [p for p in (embeddings, pairs, config_path) if p is not None]
    prepare_output(out, "adapter", overwrite, inputs)  # refuse before the work
    config = _fit_config(ctx, params, config_path)
    corpus, _ = _matrix(embeddings, key)
    queries = documents = None
    if pairs is not None:
        queries, _ = _matrix(pairs, "queries")
        documents, _ = _matrix(pairs, "documents")
    dim = corpus.shape[1]
    torch.manual_seed(config.seed)
    adapter = MatryoshkaAdapter(dim, parse_nesting(nesting, dim), hidden_dim=hidden_dim, linear=linear)
    history = fit_adapter(adapter, corpus, queries, documents, config=config, progress=not quiet)
    info = fit_info(
        config, history, embeddings=str(embeddings), key=key, n_embeddings=int(len(corpus)),
        pairs=str(pairs) if pairs is not None else None, n_pairs=int(len(queries)) if queries is not None else 0,
    )
    adapter.save(out, fit_info=info, overwrite=overwrite, inputs=inputs)
    last = history[-1]
    click.echo(f"adapter for {dim}-dim embeddings, nesting {adapter.nesting}: final loss {last['loss']:.4f} -> {out}")


@adapt_group.command("apply")
@click.argument("adapter_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("embeddings", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Output .npz: EMBEDDINGS' arrays with --key replaced by the adapted embeddings.")
@click.option("--key", default="X", show_default=True, help="Name of the embedding matrix in EMBEDDINGS.")
@click.option("--dim", "m", type=int, callback=click_check(check_int, min=1), default=None, help="Keep only the first m adapted coordinates.")
@click.option("--normalize", is_flag=True, help="L2-normalise each (truncated) adapted embedding.")
@click.option("--batch-size", type=int, default=8192, callback=click_check(check_int, min=1, max=1 << 24), show_default=True, help="Rows per forward pass.")
def apply_command(adapter_dir: Path, embeddings: Path, out: Path, key: str, m: int | None, normalize: bool, batch_size: int) -> None:
    """Adapt the embeddings in EMBEDDINGS (.npz) with the adapter in ADAPTER_DIR; other arrays are copied.

    The output keeps the input's dtype. Embeddings of another dimension than the adapter's are refused.
    """
    from mrl.adapter import MatryoshkaAdapter
    from mrl.artifacts import prepare_output_file
    from mrl.io import save_npz

    if batch_size < 1:
        raise MRLError(f"--batch-size must be a positive integer, got {batch_size}")
    prepare_output_file(out, inputs=[adapter_dir, embeddings])
    adapter = MatryoshkaAdapter.load(adapter_dir)
    x, arrays = _matrix(embeddings, key)
    arrays[key] = adapter.transform(x, m=m, normalize=normalize, batch_size=batch_size)
    save_npz(out, **arrays)
    click.echo(f"adapted {len(x)} embeddings ({x.shape[1]} -> {arrays[key].shape[1]} dims) -> {out}")


COMMANDS = [adapt_group]
