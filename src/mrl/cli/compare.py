"""``mrl compare``: the paper's comparison (MRL, MRL-E, FF, SVD, random features, slimmable, retro-fit)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("compare")
@click.option("--data", default="fashion-mnist", show_default=True, help="Data set (as for mrl train).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Folder with the IDX files.")
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="Folder for runs, tables, plots and report.md; finished runs in it are reused.")
@click.option("--methods", default="mrl,mrl-e,ff,svd,rand,slim,retrofit", show_default=True,
              help="Comma-separated subset of mrl, mrl-e, ff, svd, rand, slim, retrofit.")
@click.option("--nesting", default=None, help="Comma-separated ascending sizes (default 8,16,...,d).")
@click.option("--epochs", type=int, default=5, show_default=True, help="Epochs of every training run.")
@click.option("--seeds", type=int, default=3, show_default=True, help="Seeds 0..N-1 for every method.")
@click.option("--arch", default=None, help="Backbone: resnet (default for images) or mlp.")
@click.option("--rep-dim", type=int, default=2048, show_default=True, help="Representation size d.")
@click.option("--max-train", type=int, default=None, help="Use at most this many training examples.")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Batch size of every run.")
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Peak AdamW learning rate.")
@click.option("--rep-activation", type=click.Choice(["relu", "none"]), default="none", show_default=True,
              help="mlp: the representation's last activation for every method; relu is the paper's.")
@click.option("--rand-draws", type=int, default=3, show_default=True,
              help="Random feature selection: draws per size and seed (averaged).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def compare_command(out: Path, methods: str, quiet: bool, **settings) -> None:
    """Train or reuse every run of the MRL comparison, then write tables, plots and report.md.

    Writes OUT/table_top1.csv and OUT/table_knn1.csv (rows = sizes, mean and std over seeds per
    method), OUT/report.md with both tables and plots, and OUT/results.json. Re-running the same
    command reuses finished runs and resumes an interrupted one.
    """
    from mrl.compare import compare

    compare(out, methods=methods, progress=not quiet, echo=click.echo, **settings)


COMMANDS = [compare_command]
