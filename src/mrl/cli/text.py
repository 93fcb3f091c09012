"""``mrl text train | embed | eval``: Matryoshka text embedders from the command line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from mrl.errors import MRLError
from mrl.validation import split_numbers

# Flag name -> TextTrainConfig field; with --resume only flags given on the command line are checked
# against the saved config.
_FIELDS = ("model", "pairs", "loss", "epochs", "batch_size", "max_steps", "lr", "max_seq_length", "save_every", "seed")


def _weights_arg(text: str | None) -> list[float] | None:
    if text is None:
        return None
    return split_numbers(text, float, f"--loss-weights must be comma-separated numbers, got {text!r}")


def _sizes_arg(text: str | None) -> list[int] | None:
    if text is None:
        return None
    return split_numbers(text, int, f"sizes must be comma-separated integers, got {text!r}")


@click.group("text")
def text_group() -> None:
    """Matryoshka text embedders: fine-tune a sentence-transformers model so that every prefix of its
    embeddings retrieves well, embed texts with it, and evaluate every prefix size."""


@text_group.command("train")
@click.option("--model", default="all-MiniLM-L6-v2", show_default=True,
              help="all-MiniLM-L6-v2 (packaged) or a local sentence-transformers folder; never downloaded.")
@click.option("--pairs", default="wordnet", show_default=True,
              help="wordnet, jeopardy (their train parts) or a JSONL file of {query, positive[, negative]}.")
@click.option("--nesting", default=None, help="Comma-separated ascending prefix sizes ending at the model's dimension "
              "(default d/16, d/8, d/4, d/2, d: 24,48,96,192,384 for MiniLM).")
@click.option("--plain", is_flag=True, help="Train only the full size (the non-Matryoshka baseline).")
@click.option("--loss-weights", default=None, help="Comma-separated weight c_m per nesting size (default 1 per "
              "size and 4 at the full size, e.g. 1,1,1,1,4: the full size stays as good as plain fine-tuning); "
              "1,1,1,1,1 gives the paper's equal weights.")
@click.option("--loss", type=click.Choice(["mnrl", "cosent"]), default="mnrl", show_default=True,
              help="Per-size loss: in-batch negatives ranking (mnrl) or CoSENT.")
@click.option("--epochs", type=int, default=1, show_default=True, help="Passes over the pairs.")
@click.option("--batch-size", type=int, default=32, show_default=True,
              help="Global batch of pairs (split across torchrun ranks; in-batch negatives are gathered).")
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps.")
@click.option("--lr", type=float, default=5e-5, show_default=True, help="AdamW learning rate.")
@click.option("--max-seq-length", type=int, default=64, show_default=True, help="Tokens kept per text.")
@click.option("--save-every", type=int, default=50, show_default=True, help="Steps between checkpoints.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the batch order and dropout.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory to create.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def train_command(ctx: click.Context, nesting: str | None, loss_weights: str | None, plain: bool, out: Path, resume: bool,
                  quiet: bool, **params) -> None:
    """Fine-tune a sentence-transformers model with MRL's nested loss (or --plain) into --out.

    Runs unchanged under `torchrun --nproc_per_node=K`: K ranks of batch B/K train like one process
    of batch B. Checkpoints are safetensors; --resume continues exactly where a run stopped.
    """
    from mrl.text.train import TextTrainConfig, read_run_config, train_text

    values = {name: params[name] for name in _FIELDS}
    values["nesting"] = _sizes_arg(nesting)
    values["loss_weights"] = _weights_arg(loss_weights)
    values["plain"] = plain
    if resume:
        saved = read_run_config(out)
        given = {
            name for name in (*_FIELDS, "nesting", "loss_weights", "plain")
            if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)
        }
        values = {**dataclasses.asdict(saved), **{name: values[name] for name in given}}
    config = TextTrainConfig.from_dict(values)
    train_text(config, out, resume=resume, progress=not quiet)
    click.echo(f"text run -> {out}")


def _model(run: Path | None, model: str | None):
    from mrl.text.model import load_text_model
    from mrl.text.train import load_run_model

    if (run is None) == (model is None):
        raise MRLError("give either a RUN directory or --model, not both")
    return load_run_model(run) if run is not None else load_text_model(model)


def _read_texts(path: Path) -> list[str]:
    try:
        texts = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except UnicodeDecodeError:
        raise MRLError(f"{path} is not UTF-8 text") from None
    if not texts:
        raise MRLError(f"{path} holds no texts (one per line)")
    return texts


@text_group.command("embed")
@click.argument("run", required=False, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--model", default=None, help="Embed with this model instead of a run (all-MiniLM-L6-v2 or a folder).")
@click.option("--texts", type=click.Path(dir_okay=False, exists=True, path_type=Path), required=True,
              help="UTF-8 file, one text per line (blank lines skipped).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output .npz with X [N, d].")
@click.option("--dim", "m", type=int, default=None, help="Keep only the first m coordinates.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Texts per forward pass.")
def embed_command(run: Path | None, model: str | None, texts: Path, out: Path, m: int | None, batch_size: int) -> None:
    """Embed the lines of --texts with the model of RUN (or --model) into --out (.npz, key X)."""
    from mrl.artifacts import prepare_output_file
    from mrl.io import save_npz
    from mrl.nesting import truncate
    from mrl.text.model import embed, embedding_dim

    if batch_size < 1:
        raise MRLError(f"--batch-size must be a positive integer, got {batch_size}")
    # never the texts themselves, a run or model folder, or a file inside an mrl artifact (its checksums would break)
    prepare_output_file(out, inputs=[p for p in (texts, run, model) if p is not None and Path(p).exists()])
    lines = _read_texts(texts)
    encoder = _model(run, model)
    dim = embedding_dim(encoder)
    if m is not None and not 1 <= m <= dim:
        raise MRLError(f"--dim must be in [1, {dim}], got {m}")
    x = embed(encoder, lines, batch_size=batch_size)
    if m is not None:
        x = truncate(x, m)
    save_npz(out, X=x)
    click.echo(f"embedded {len(lines)} texts ({x.shape[1]} dims) -> {out}")


@text_group.command("eval")
@click.argument("run", required=False, type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--model", default=None, help="Evaluate this model instead of a run (all-MiniLM-L6-v2 or a folder).")
@click.option("--task", type=click.Choice(["wordnet", "jeopardy"]), default="wordnet", show_default=True,
              help="Held-out retrieval task.")
@click.option("--sizes", default=None, help="Prefix sizes (default: the run's nesting, or d/16 ... d).")
@click.option("--shortlist", default="24,48", show_default=True, help="Shortlist sizes of the funnel (rerank at d).")
@click.option("--limit", type=int, default=None, help="Use only the first N held-out queries (quicker).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Also write the results as JSON.")
def eval_command(run: Path | None, model: str | None, task: str, sizes: str | None, shortlist: str, limit: int | None,
                 out: Path | None) -> None:
    """nDCG@10, MRR@10 and recall@100 of RUN's model (or --model) at every prefix size, plus the funnel."""
    from mrl.artifacts import prepare_output_file
    from mrl.io import write_json
    from mrl.nesting import validate_nesting
    from mrl.text.evaluate import eval_task, evaluate_embeddings, format_results
    from mrl.text.model import embed, embedding_dim
    from mrl.text.train import TextTrainConfig, read_run_config

    if out is not None:  # checked before the work: never an input, nor a file inside an mrl artifact
        prepare_output_file(out, inputs=[p for p in (run, model) if p is not None and Path(p).exists()])
    split = eval_task(task, limit)
    encoder = _model(run, model)
    dim = embedding_dim(encoder)
    config = read_run_config(run) if run is not None else TextTrainConfig()
    chosen = _sizes_arg(sizes)
    chosen = validate_nesting(chosen, dim) if chosen else dataclasses.replace(config, plain=False).sizes(dim)
    shortlist_dims = validate_nesting(_sizes_arg(shortlist) or [], dim)
    results = evaluate_embeddings(
        embed(encoder, split.queries), embed(encoder, split.documents), split.query_labels, split.document_labels,
        chosen, shortlist_dims,
    )
    click.echo(f"{task}: {len(split.queries)} queries x {len(split.documents)} documents (values x100)")
    click.echo(format_results(results))
    if out is not None:
        write_json(out, {"task": task, "limit": limit, "n_queries": len(split.queries),
                         "n_documents": len(split.documents), **results})


COMMANDS = [text_group]
