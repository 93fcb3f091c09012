"""``mrl lm train|eval|generate``: the Matryoshka language model from the command line."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mrl.errors import MRLError
from mrl.validation import check_float, check_int, check_seed, click_check

_MODEL_OPTIONS = ("vocab_size", "context", "d_model", "n_layers", "n_heads", "head", "nesting", "widths")
_TRAIN_OPTIONS = ("steps", "batch_size", "lr", "seed", "width_weights")


def _configs(model_values: dict, train_values: dict, ff_size: int | None):
    """The LMConfig and TrainConfig of merged option values (``--ff-size`` sets an ff model's nesting)."""
    from mrl.lm.model import LMConfig
    from mrl.lm.train import TrainConfig
    from mrl.nesting import parse_nesting

    model_values = dict(model_values)
    if model_values["head"] == "ff" and ff_size is not None:
        model_values["nesting"] = [ff_size]
    elif ff_size is not None:
        raise MRLError(f"--ff-size applies to --head ff only, got --head {model_values['head']}")
    if isinstance(model_values["nesting"], str):
        model_values["nesting"] = parse_nesting(model_values["nesting"], model_values["d_model"])
    if model_values["head"] == "ff" and len(model_values["nesting"]) != 1:
        raise MRLError("an ff model needs --ff-size M (its final representation size)")
    return LMConfig.from_dict(model_values), TrainConfig.from_dict(train_values)


def _given(ctx: click.Context, params: dict, names: tuple[str, ...]) -> dict:
    """The options among ``names`` given on the command line (not left at their defaults)."""
    return {k: params[k] for k in names if ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT}


def _check_resume_settings(ctx: click.Context, out: Path, corpus: str, ff_size: int | None, tokenizer: str | None,
                           tokens_from: str | None, config: str | None, params: dict) -> None:
    """A resumed run keeps its own settings: refuse any option given on the command line that differs
    from them (exact resume; the same command line with --resume is fine)."""
    from dataclasses import asdict

    from mrl.lm.train import read_run_config

    for name, value in (("--tokenizer", tokenizer), ("--tokens-from", tokens_from), ("--config", config)):
        if value is not None:
            raise MRLError(f"{name} sets up a new run; {out} is resumed with the settings it was started with")
    stored = read_run_config(out)
    if ctx.get_parameter_source("corpus") != click.core.ParameterSource.DEFAULT and corpus != stored["corpus"]:
        raise MRLError(f"--corpus {corpus} differs from the run's {stored['corpus']}; {out} is resumed with its own settings")
    model_config, train_config = _configs({**stored["model"], **_given(ctx, params, _MODEL_OPTIONS)},
                                          {**stored["train"], **_given(ctx, params, _TRAIN_OPTIONS)}, ff_size)
    changed = {}
    for section, wanted in (("model", model_config.to_dict()), ("train", asdict(train_config))):
        changed.update({k: (wanted[k], stored[section].get(k)) for k in wanted if wanted[k] != stored[section].get(k)})
    if changed:
        listed = ", ".join(f"{k} {new!r} (the run has {old!r})" for k, (new, old) in sorted(changed.items()))
        raise MRLError(f"{out} is resumed with the settings it was started with; the command line changes {listed}")


def _set_threads(threads: int) -> None:
    import torch

    if threads < 1:
        raise MRLError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(threads)


@click.group("lm")
def lm_group() -> None:
    """Matryoshka language model: nested output heads, per-size perplexity, adaptive decoding."""


@lm_group.command("train")
@click.option("--corpus", default="wordnet", show_default=True, help="wordnet (WordNet 3.0 glosses), or a .txt file or folder of .txt files.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Run directory to create (or resume).")
@click.option("--head", type=click.Choice(["mrl", "mrl-e", "ff"]), default="mrl", show_default=True,
              help="mrl: one head per size; mrl-e: heads tied to the input embedding; ff: one head of --ff-size dims.")
@click.option("--ff-size", type=int, callback=click_check(check_int, min=1, max=1 << 16), default=None, help="Final representation size m of an ff model (a d -> m projection).")
@click.option("--nesting", default="8,16,32,64,128", show_default=True, help="Comma-separated ascending head sizes (mrl, mrl-e).")
@click.option("--widths", default=None,
              help="Nested FFN widths (MatFormer): ascending fractions ending at 1, e.g. 0.25,0.5,1; every width is trained.")
@click.option("--width-weights", default=None,
              help="Each width's weight in the loss, comma-separated, one per --widths (default: all 1).")
@click.option("--vocab-size", type=int, callback=click_check(check_int, min=8, max=1 << 20), default=2048, show_default=True, help="BPE vocabulary size (tokenizer trained on the corpus).")
@click.option("--d-model", type=int, callback=click_check(check_int, min=1, max=1 << 16), default=128, show_default=True, help="Hidden size d of the transformer.")
@click.option("--layers", "n_layers", type=int, callback=click_check(check_int, min=1, max=1024), default=2, show_default=True, help="Transformer blocks.")
@click.option("--n-heads", type=int, callback=click_check(check_int, min=1, max=1024), default=4, show_default=True, help="Attention heads per block.")
@click.option("--context", type=int, callback=click_check(check_int, min=1, max=1 << 16), default=64, show_default=True, help="Context length in tokens.")
@click.option("--steps", type=int, callback=click_check(check_int, min=1, max=10**9), default=400, show_default=True, help="Optimisation steps.")
@click.option("--batch-size", type=int, callback=click_check(check_int, min=1, max=1 << 20), default=32, show_default=True, help="Windows per step.")
@click.option("--lr", type=float, callback=click_check(check_float, min=0, max=10, min_open=True), default=3e-3, show_default=True, help="Peak AdamW learning rate (warm-up, cosine decay).")
@click.option("--seed", type=int, callback=click_check(check_seed), default=0, show_default=True, help="Seed of the weights and batch order.")
@click.option("--tokenizer", type=click.Path(dir_okay=False, exists=True), default=None, help="Reuse this tokenizer.json instead of training one.")
@click.option("--tokens-from", type=click.Path(file_okay=False, exists=True), default=None,
              help="Copy tokenizer and token ids from this run of the same corpus (compared models see the same tokens).")
@click.option("--config", type=click.Path(dir_okay=False, exists=True), default=None,
              help='JSON {"model": {...}, "train": {...}} (as a run\'s config.json); flags given override it.')
@click.option("--resume", is_flag=True, help="Continue the run in --out from its checkpoint (settings come from its config.json).")
@click.option("--threads", type=int, callback=click_check(check_int, min=1, max=4096), default=1, show_default=True, help="torch CPU threads.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def train_command(ctx: click.Context, corpus: str, out: Path, ff_size: int | None, tokenizer: str | None, tokens_from: str | None,
                  config: str | None, resume: bool, threads: int, quiet: bool, **params) -> None:
    """Train a Matryoshka LM; writes config.json, tokenizer.json, safetensors checkpoints,
    metrics.jsonl (train and validation loss per size) and model.safetensors."""
    from mrl.artifacts import kind_of, lock, prepare_output
    from mrl.io import read_json
    from mrl.lm.train import prepare_run, train

    _set_threads(threads)
    if kind_of(out) == "lm-run":
        if not resume:
            raise MRLError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        _check_resume_settings(ctx, out, corpus, ff_size, tokenizer, tokens_from, config, params)
        train(out, resume=True, progress=not quiet)
        return
    inputs = [p for p in (corpus, tokenizer, tokens_from, config) if p is not None and Path(p).exists()]
    prepare_output(out, "lm-run", False, inputs)
    base = read_json(config) if config else {}
    if not isinstance(base, dict) or set(base) - {"model", "train", "corpus"}:
        raise MRLError(f"--config must hold a JSON object with keys model, train (and corpus), got {config}")
    model_values = {**base.get("model", {}), **_given(ctx, params, _MODEL_OPTIONS)}
    train_values = {**base.get("train", {}), **_given(ctx, params, _TRAIN_OPTIONS)}
    for k in _MODEL_OPTIONS:
        model_values.setdefault(k, params[k])
    for k in _TRAIN_OPTIONS:
        train_values.setdefault(k, params[k])
    model_config, train_config = _configs(model_values, train_values, ff_size)
    if ctx.get_parameter_source("corpus") == click.core.ParameterSource.DEFAULT:
        corpus = base.get("corpus", corpus)
    with lock(out):
        prepare_run(out, corpus, model_config, train_config, tokenizer_path=tokenizer, tokens_from=tokens_from)
    train(out, progress=not quiet)


@lm_group.command("eval")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--max-tokens", type=int, callback=click_check(check_int, min=1), default=None, help="Score at most this many validation tokens (default all).")
@click.option("--tolerance", type=float, callback=click_check(check_float, min=0), default=0.01, show_default=True,
              help="Adaptive decoding: allowed relative perplexity increase over the full head.")
@click.option("--batch-size", type=int, callback=click_check(check_int, min=1, max=1 << 20), default=32, show_default=True, help="Windows per forward pass.")
@click.option("--threads", type=int, callback=click_check(check_int, min=1, max=4096), default=1, show_default=True, help="torch CPU threads.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def eval_command(run_dir: Path, max_tokens: int | None, tolerance: float, batch_size: int, threads: int, quiet: bool) -> None:
    """Per-size validation perplexity and top-1 (eval.json); for models with several sizes, also
    fit adaptive-decoding thresholds (adaptive.json). A model trained with --widths also gets the
    perplexity per (FFN width, head size)."""
    from mrl.lm.evaluate import evaluate_run, fit_adaptive

    _set_threads(threads)
    if not tolerance >= 0:
        raise MRLError(f"--tolerance must be >= 0, got {tolerance}")
    summary = evaluate_run(run_dir, batch_size=batch_size, max_tokens=max_tokens, progress=not quiet, for_adaptive=True)
    click.echo(f"{summary['tokens']} validation tokens")
    click.echo("size  perplexity  top-1")
    for m in summary["nesting"]:
        click.echo(f"{m:>4}  {summary['ppl'][str(m)]:>10.2f}  {100 * summary['top1'][str(m)]:5.1f}%")
    if "widths" in summary:
        click.echo("perplexity per (FFN width, head size); trunk multiply-adds per token")
        click.echo("width  " + "  ".join(f"{m:>8}" for m in summary["nesting"]) + "  trunk MACs")
        for w, part in summary["widths"].items():
            click.echo(f"{w:>5}  " + "  ".join(f"{part['ppl'][str(m)]:>8.2f}" for m in summary["nesting"])
                       + f"  {part['trunk_flops']:>10,}")
    if len(summary["nesting"]) > 1:
        a = fit_adaptive(run_dir, tolerance=tolerance)
        c = a["chosen"]
        click.echo(
            f"adaptive: perplexity {c['ppl']:.2f} ({100 * c['ppl_increase']:+.2f}% vs full head), top-1 {100 * c['top1']:.1f}%, "
            f"{c['flops_reduction']:.2f}x fewer head multiply-adds per token"
        )


@lm_group.command("generate")
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--prompt", default="", help="Text to continue (empty: start a new document).")
@click.option("--max-size", type=int, callback=click_check(check_int, min=1), default=None, help="Use the head of this size for every token (default: the largest).")
@click.option("--adaptive", is_flag=True, help="Per token, the smallest head whose confidence passes the thresholds of adaptive.json.")
@click.option("--max-new-tokens", type=int, callback=click_check(check_int, min=1, max=1 << 20), default=40, show_default=True, help="Tokens to sample at most.")
@click.option("--temperature", type=float, callback=click_check(check_float, min=0), default=0.8, show_default=True, help="Sampling temperature (0: greedy).")
@click.option("--top-k", type=int, callback=click_check(check_int, min=1), default=40, show_default=True, help="Sample among the k most likely tokens.")
@click.option("--seed", type=int, callback=click_check(check_seed), default=0, show_default=True, help="Sampling seed.")
def generate_command(run_dir: Path, prompt: str, max_size: int | None, adaptive: bool, max_new_tokens: int,
                     temperature: float, top_k: int, seed: int) -> None:
    """Sample a continuation of --prompt; prints the text, then (to stderr) the head sizes used and
    the output-head multiply-adds per token."""
    from mrl.lm.decoding import generate
    from mrl.lm.evaluate import read_thresholds
    from mrl.lm.tokenizer import LMTokenizer
    from mrl.lm.train import load_model, read_lm_run

    if adaptive and max_size is not None:
        raise MRLError("give either --max-size or --adaptive, not both")
    try:
        prompt.encode("utf-8")  # bytes that are not UTF-8 reach here as lone surrogates, which no tokenizer takes
    except UnicodeEncodeError:
        raise MRLError(f"--prompt must be UTF-8 text; it holds bytes that are not: {prompt.encode('utf-8', 'backslashreplace').decode()}") from None
    model = load_model(run_dir)
    read_lm_run(run_dir, verify=["tokenizer.json"])
    tokenizer = LMTokenizer.load(run_dir / "tokenizer.json")
    thresholds = read_thresholds(run_dir) if adaptive else None
    out = generate(model, tokenizer, prompt, max_new_tokens=max_new_tokens, size=max_size, thresholds=thresholds,
                   temperature=temperature, top_k=top_k, seed=seed)
    click.echo(out.text)
    full = model.config.d_model * model.config.vocab_size
    print(f"sizes used: {out.sizes}", file=sys.stderr)
    print(f"head multiply-adds per token: {out.head_macs_per_token:.0f} ({full / out.head_macs_per_token:.2f}x fewer than the full head)", file=sys.stderr)


COMMANDS = [lm_group]
