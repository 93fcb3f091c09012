"""``mrl adaptive``: adaptive classification of a run's saved logits (MRL paper, section 4.2.1).

Reads RUN_DIR/logits_{val,test}.npy, labels_{val,test}.npy and config.json (written by
``mrl train`` and ``mrl eval --save-logits``); fits thresholds on random halves of val over seeds,
measures on the other half and on test, sweeps the cost-accuracy front, and writes
DIR/adaptive.json, DIR/adaptive.png and DIR/report.md.
"""

from __future__ import annotations

from pathlib import Path

import click

from mrl.errors import MRLError
from mrl.validation import check_float, check_int, check_seed, click_check


@click.command("adaptive")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--policy", type=click.Choice(["greedy", "budget", "all"]), default="all", show_default=True,
              help="greedy: the paper's per-step thresholds; budget: cheapest thresholds reaching the target "
                   "accuracy; all: both.")
@click.option("--cost", "costs", type=click.Choice(["final", "cumulative", "flops"]), multiple=True,
              default=("final", "cumulative"), show_default=True,
              help="Cost the budget policy minimises (repeatable): dims of the answering head, dims of all "
                   "heads run, or their multiply-adds m*C.")
@click.option("--target-drop", type=float, callback=click_check(check_float, min=0, max=100, max_open=True), default=0.2, show_default=True,
              help="Budget policy: accuracy (points) it may lose against the largest size on the fit data.")
@click.option("--confidence", type=float, callback=click_check(check_float, min=0.5, max=1, max_open=True), default=0.9, show_default=True,
              help="Budget policy: the target must hold for a lower confidence bound at this level on the fit "
                   "data (0.5: take the fit accuracy at face value).")
@click.option("--budget", type=float, callback=click_check(check_float, min=0, min_open=True), default=None,
              help="Budget policy: instead of a target, the most expected cost to spend (units of --cost).")
@click.option("--seeds", type=int, callback=click_check(check_int, min=1, max=100_000), default=30, show_default=True, help="Random val splits to fit and measure on.")
@click.option("--fit-fraction", type=float, callback=click_check(check_float, min=0, max=1, min_open=True, max_open=True), default=0.5, show_default=True,
              help="Share of val used to fit the thresholds; the rest measures them.")
@click.option("--n-quantiles", type=int, callback=click_check(check_int, min=1, max=100_000), default=25, show_default=True,
              help="Budget policy: candidate thresholds per size (quantiles of its confidence).")
@click.option("--ff", "ff_runs", type=click.Path(file_okay=False, path_type=Path), multiple=True,
              help="A fixed-feature run directory (repeatable); its eval.json top-1 is drawn as a point.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder to create for adaptive.json, adaptive.png and report.md.")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def adaptive_command(run_dir: Path, policy: str, costs: tuple[str, ...], target_drop: float, confidence: float,
                     budget: float | None,
                     seeds: int, fit_fraction: float, n_quantiles: int, ff_runs: tuple[Path, ...], out: Path,
                     overwrite: bool, quiet: bool) -> None:
    """Adaptive classification: answer each input with the smallest confident nesting size.

    Fits max-softmax thresholds on random halves of the validation logits (--seeds times),
    measures accuracy and expected dims on the other half and on test (mean +- std), sweeps the
    whole accuracy vs expected-dims front, and writes DIR/adaptive.json, DIR/adaptive.png and
    DIR/report.md. Needs `mrl eval RUN_DIR --save-logits` first.
    """
    from mrl.adaptive.experiment import certification_text, run_adaptive

    if not 0.0 <= target_drop < 100.0:
        raise MRLError(f"--target-drop is in accuracy points, in [0, 100), got {target_drop}")
    policies = ["greedy", "budget"] if policy == "all" else [policy]
    result = run_adaptive(
        run_dir, out, policies=policies, costs=list(dict.fromkeys(costs)), target_drop=target_drop / 100.0,
        confidence=confidence, budget=budget, seeds=seeds, fit_fraction=fit_fraction, n_quantiles=n_quantiles, ff_runs=list(ff_runs),
        overwrite=overwrite, progress=not quiet,
    )
    for name, res in result["policies"].items():
        test = res["test"]
        click.echo(f"{name:>20}: test accuracy {100 * test['accuracy']['mean']:.2f} ± {100 * test['accuracy']['std']:.2f}"
                   f"  expected dims {test['expected_dims']['mean']:.1f} (cumulative "
                   f"{test['expected_cumulative_dims']['mean']:.1f}); target certified: {certification_text(res)}")
        if res["all_val_fit"]["certified"] is False:
            click.echo(f"{'':>20}  target NOT certified on all of val: the largest size answers every sample")
    click.echo(f"wrote {out / 'adaptive.json'}, {out / 'adaptive.png'}, {out / 'report.md'}")


COMMANDS = [adaptive_command]
