"""``mrl train``, ``mrl eval``, ``mrl embed`` and ``mrl demo``."""

from __future__ import annotations

from pathlib import Path

import click

from mrl.config import MODES, TrainConfig
from mrl.recipe import OPTIMIZERS, PRECISIONS, SCHEDULES
from mrl.errors import MRLError
from mrl.io import save_npz
from mrl.models.widths import NORMS, WIDTH_SAMPLING

_OPTION_FIELDS = {
    "data": "data", "data_dir": "data_dir", "mode": "mode", "arch": "arch", "ff_dim": "ff_dim",
    "rep_dim": "rep_dim", "nesting": "nesting", "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
    "max_train": "max_train", "seed": "seed", "augment": "augment",
    "image_size": "image_size", "workers": "workers", "precision": "precision", "channels_last": "channels_last",
    "compile": "compile", "accumulate": "accumulate", "label_smoothing": "label_smoothing", "optimizer": "optimizer",
    "momentum": "momentum", "weight_decay": "weight_decay", "warmup_epochs": "warmup_epochs", "schedule": "schedule",
    "lr_step_epochs": "lr_step_epochs", "lr_gamma": "lr_gamma", "rep_activation": "rep_activation",
    "head_lr_scale": "head_lr_scale", "widths": "widths", "width_norm": "width_norm",
    "width_sampling": "width_sampling", "width_samples": "width_samples", "width_distill": "width_distill",
    "width_weights": "width_weights",
    "hidden": "hidden",
}


def _config_from_options(ctx: click.Context, params: dict, resume: bool, out: Path) -> TrainConfig:
    from mrl.runs import is_run_dir, load_config

    given = {
        name: params[name] for name in _OPTION_FIELDS
        if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)
    }
    if params.get("config"):
        from mrl.io import read_json

        base = read_json(params["config"])
        if not isinstance(base, dict):
            raise MRLError(f"{params['config']} must hold a JSON object of training settings")
        base.update(given)
        given = base
    if resume and is_run_dir(out):
        saved = load_config(out)
        fresh = TrainConfig.from_dict({**saved.to_dict(), **given})
        if fresh.to_dict() != saved.to_dict():
            changed = sorted(k for k, v in fresh.to_dict().items() if saved.to_dict()[k] != v)
            raise MRLError(f"cannot resume {out} with different settings: {', '.join(changed)}")
        return saved
    defaults = {name: params[name] for name in _OPTION_FIELDS}
    return TrainConfig.from_dict({**defaults, **given})


@click.command("train")
@click.option("--data", default="fashion-mnist", show_default=True,
              help="fashion-mnist, mnist, a path to an .npz (X, y) or an image folder (one sub-folder per class; "
                   "ROOT/train/<class> + ROOT/val/<class> is streamed, ImageNet-style).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Folder with the four IDX files (default for fashion-mnist: /usr/share/datasets/fashion-mnist).")
@click.option("--mode", type=click.Choice(MODES), default="mrl", show_default=True,
              help="mrl: one head per size; mrl-e: tied heads; ff: a fixed-feature model of --ff-dim dims.")
@click.option("--arch", default=None,
              help="Backbone: resnet (default for images), mlp (default for vectors), resnet50, or timm/<name>.")
@click.option("--ff-dim", type=int, default=None, help="Representation size of an ff run.")
@click.option("--rep-dim", type=int, default=2048, show_default=True, help="Representation size d.")
@click.option("--nesting", default=None, help="Comma-separated ascending sizes (default 8,16,...,d).")
@click.option("--widths", default=None,
              help="Nested widths of the MLP's hidden layers (MatFormer): ascending fractions ending at 1, e.g. 0.125,0.25,0.5,1.")
@click.option("--width-norm", type=click.Choice(NORMS), default="layer", show_default=True,
              help="Norm of a nested-width MLP: layer (LayerNorm, any width runs) or batch (one BatchNorm per width).")
@click.option("--width-sampling", type=click.Choice(WIDTH_SAMPLING), default="all", show_default=True,
              help="Widths trained per step: all, random (--width-samples of them) or sandwich "
                   "(smallest + full + --width-samples others).")
@click.option("--width-samples", type=int, default=1, show_default=True, help="k of --width-sampling random / sandwich.")
@click.option("--width-distill", type=float, default=0.0, show_default=True,
              help="In-place distillation: share of the full width's soft predictions in each smaller width's loss "
                   "(0: labels only; 1: the full width's predictions only).")
@click.option("--width-weights", default=None,
              help="Each width's weight in the loss, comma-separated, one per --widths (default: all 1).")
@click.option("--hidden", default=None, help="MLP hidden layer sizes, comma-separated (default 512,512).")
@click.option("--epochs", type=int, default=10, show_default=True, help="Training epochs.")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Global batch size.")
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Peak learning rate (after warm-up).")
@click.option("--max-train", type=int, default=None, help="Use at most this many training examples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (weights, order, augmentation).")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Flip and shift in-memory images while training (streamed folders always crop and flip).")
@click.option("--image-size", type=int, default=None, help="Crop side of a streamed folder's images (default 224).")
@click.option("--workers", type=int, default=0, show_default=True, help="DataLoader processes decoding a streamed folder.")
@click.option("--precision", type=click.Choice(list(PRECISIONS)), default="fp32", show_default=True,
              help="Autocast dtype of the forward pass (fp16 also scales the loss).")
@click.option("--channels-last", is_flag=True, help="NHWC memory layout (faster convolutions on GPUs).")
@click.option("--compile", is_flag=True, help="torch.compile the model.")
@click.option("--accumulate", type=int, default=1, show_default=True,
              help="Micro-batches per optimizer step (the batch is split; same steps, less memory).")
@click.option("--label-smoothing", type=float, default=0.0, show_default=True, help="Cross-entropy label smoothing.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default="adamw", show_default=True,
              help="adamw, or sgd with momentum (the paper's ResNet-50 recipe).")
@click.option("--momentum", type=float, default=0.9, show_default=True, help="SGD momentum.")
@click.option("--weight-decay", type=float, default=5e-4, show_default=True, help="Weight decay.")
@click.option("--warmup-epochs", type=float, default=0.5, show_default=True, help="Linear learning-rate warm-up.")
@click.option("--schedule", type=click.Choice(SCHEDULES), default="cosine", show_default=True,
              help="cosine to 0, or step (x --lr-gamma every --lr-step-epochs).")
@click.option("--lr-step-epochs", type=int, default=30, show_default=True, help="Step schedule: epochs per step.")
@click.option("--lr-gamma", type=float, default=0.1, show_default=True, help="Step schedule: factor per step.")
@click.option("--rep-activation", type=click.Choice(["relu", "none"]), default="none", show_default=True,
              help="mlp: the representation's last activation; none ends at its BatchNorm, relu is the paper's.")
@click.option("--head-lr-scale", type=float, default=1.0, show_default=True,
              help="Learning rate of the heads relative to --lr.")
@click.option("--config", type=click.Path(dir_okay=False, exists=True), default=None,
              help="JSON file of settings; flags given on the command line override it.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory to create.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def train_command(ctx: click.Context, out: Path, resume: bool, quiet: bool, **params) -> None:
    """Train an MRL, MRL-E or FF model and write a run directory.

    The run directory holds config.json, safetensors checkpoints and metrics.jsonl (per epoch: loss
    and validation top-1 per size). Works unchanged under `torchrun --nproc_per_node=K mrl train ...`.
    """
    from mrl.training import train

    config = _config_from_options(ctx, params, resume, out)
    train(config, out, resume=resume, progress=not quiet)


def _print_eval(result: dict) -> None:
    from mrl.report import markdown_table

    columns = {"top-1": {int(m): v for m, v in result["top1"].items()},
               "top-5": {int(m): v for m, v in result["top5"].items()},
               "1-NN": {int(m): v for m, v in result["knn1"].items()}}
    click.echo(markdown_table(columns))
    if "grid" in result:
        grid = result["grid"]
        for title, key in (("top-1", "top1"), ("1-NN", "knn1"), ("FLOPs per example", "flops")):
            click.echo(f"\n{title} per (width, dim)")
            table = {f"w={w}": {int(m): v for m, v in grid[key][str(w)].items()} for w in grid["widths"]}
            click.echo(markdown_table(table, percent=key != "flops"))


@click.command("eval")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--save-logits", is_flag=True, help="Also write per-size val/test logits and labels (.npy).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def eval_command(run_dir: Path, save_logits: bool, quiet: bool) -> None:
    """Evaluate every nesting size of a run on the test set; writes RUN_DIR/eval.json.

    Linear top-1 and top-5 use each size's own head; 1-NN searches the train embeddings with the
    test embeddings (cosine on the L2-normalised prefix). A run trained with --widths also gets the
    (width x dim) grid of top-1, 1-NN and FLOPs per example.
    """
    from mrl.evaluation import evaluate_run

    _print_eval(evaluate_run(run_dir, save_logits=save_logits, progress=not quiet))


@click.command("embed")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test", show_default=True,
              help="Which split to embed.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Output .npz (X, y).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def embed_command(run_dir: Path, split: str, out: Path, quiet: bool) -> None:
    """Write the representations of one split as an .npz with float32 X [N, d] and int64 y [N]."""
    from mrl.artifacts import prepare_output_file
    from mrl.evaluation import embed_run
    from mrl.runs import is_run_dir, load_config

    inputs = [run_dir]
    if is_run_dir(run_dir):  # the run's own data is an input too: overwriting it broke the run (its checkpoints no longer fit)
        config = load_config(run_dir)
        inputs += [p for p in (config.data, config.data_dir) if p is not None and Path(p).exists()]
    prepare_output_file(out, inputs=inputs)
    x, y = embed_run(run_dir, split, progress=not quiet)
    save_npz(out, X=x, y=y)
    click.echo(f"wrote {out}: X {x.shape} float32, y {y.shape}")


@click.command("demo")
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/demo"), show_default=True,
              help="Folder for the runs, report.md and plots; finished runs in it are reused.")
@click.option("--data", default="fashion-mnist", show_default=True, help="Data set (as for mrl train).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Folder with the IDX files.")
@click.option("--arch", default="mlp", show_default=True,
              help="Backbone for every run: mlp (fits ~15 min on 2 CPU cores) or resnet (more accurate, ~25x the compute).")
@click.option("--rep-dim", type=int, default=2048, show_default=True, help="Representation size d of MRL / MRL-E.")
@click.option("--ff-dims", default="8,32,2048", show_default=True, help="Sizes of the FF baselines to train.")
@click.option("--epochs", type=int, default=10, show_default=True, help="Epochs per run.")
@click.option("--max-train", type=int, default=None, help="Use at most this many training examples.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (the first one with --seeds).")
@click.option("--seeds", type=int, default=1, show_default=True,
              help="Train every run with this many seeds (seed, seed+1, ...); the report shows mean ± std.")
@click.option("--rep-activation", type=click.Choice(["relu", "none"]), default="none", show_default=True,
              help="mlp: the representation's last activation; none ends at its BatchNorm, relu is the paper's.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo_command(out: Path, data: str, data_dir: str | None, arch: str, rep_dim: int, ff_dims: str, epochs: int,
                 max_train: int | None, seed: int, seeds: int, rep_activation: str, quiet: bool) -> None:
    """Train MRL, MRL-E and FF baselines, evaluate every size, and write report.md with plots.

    Re-running continues: finished runs are reused and an interrupted one resumes.
    """
    from mrl.demo import run_demo

    run_demo(out, data=data, data_dir=data_dir, arch=arch, rep_dim=rep_dim, ff_dims=ff_dims, epochs=epochs,
             max_train=max_train, seed=seed, seeds=seeds, rep_activation=rep_activation, progress=not quiet,
             echo=click.echo)


COMMANDS = [train_command, eval_command, embed_command, demo_command]
