"""Matryoshka LM training, resume, evaluation, adaptive decoding, generation and the `mrl lm` CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from mrl.artifacts import write_manifest
from mrl.cli import cli
from mrl.errors import MRLError
from mrl.io import load_tensors, read_json, read_jsonl
from mrl.lm.decoding import generate
from mrl.lm.evaluate import decoding_costs, evaluate_run, fit_adaptive, summarize, token_stats, windows_of
from mrl.lm.model import LMConfig, MatryoshkaLM
from mrl.lm.tokenizer import LMTokenizer
from mrl.lm.train import TrainConfig, learning_rate, load_model, prepare_run, train

from test_lm import sentences

MODEL = dict(vocab_size=64, context=8, d_model=16, n_layers=1, n_heads=2)


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "toy.txt"
    path.write_text("\n\n".join(sentences(200)) + "\n")
    return path


def make_run(path, corpus_file, head="mrl-e", steps=6, nesting=(4, 8, 16), **kw):
    config = LMConfig(head=head, nesting=list(nesting), **MODEL)
    prepare_run(path, str(corpus_file), config, TrainConfig(steps=steps, batch_size=4, warmup_steps=2, checkpoint_every=2, log_every=1, eval_batches=1), **kw)
    return path


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path, corpus_file):
    whole = make_run(tmp_path / "whole", corpus_file, head="mrl")
    train(whole, progress=False)
    parts = make_run(tmp_path / "parts", corpus_file, head="mrl", tokens_from=whole)
    train(parts, stop_after=3, progress=False)
    assert not (parts / "model.safetensors").exists()
    assert read_json(parts / "manifest.json")["meta"]["step"] == 3
    train(parts, resume=True, progress=False)
    a, b = load_tensors(whole / "model.safetensors"), load_tensors(parts / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    steps = [r["step"] for r in read_jsonl(parts / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert len(read_jsonl(parts / "metrics.jsonl")[-1]["val_loss"]) == 3
    # a fresh (non-resumed) restart forgets the earlier metrics
    train(parts, progress=False)
    assert [r["step"] for r in read_jsonl(parts / "metrics.jsonl")] == [1, 2, 3, 4, 5, 6]


def test_training_lowers_the_loss_at_every_size(tmp_path, corpus_file):
    run = make_run(tmp_path / "run", corpus_file, steps=30)
    train(run, progress=False)
    records = read_jsonl(run / "metrics.jsonl")
    first, last = records[0]["train_loss"], records[-1]["val_loss"]
    assert all(b < a - 0.25 for a, b in zip(first, last)), (first, last)  # from ln(64) = 4.16


def test_learning_rate_schedule():
    cfg = TrainConfig(steps=10, warmup_steps=2, lr=1.0, min_lr=0.1)
    values = [learning_rate(s, cfg) for s in range(11)]
    assert values[:3] == [0.5, 1.0, 1.0]
    assert all(a >= b for a, b in zip(values[2:], values[3:])) and values[-1] == pytest.approx(0.1)
    with pytest.raises(MRLError, match=r"unknown training config key\(s\) \['epochs'\]"):
        TrainConfig.from_dict({"epochs": 3})
    with pytest.raises(MRLError, match="steps must be an integer >= 1 and <= 1000000000, got 0"):
        TrainConfig(steps=0)


def test_token_stats_match_cross_entropy():
    torch.manual_seed(0)
    model = MatryoshkaLM(LMConfig(head="mrl", nesting=[4, 16], **MODEL)).eval()
    windows = windows_of(torch.randint(0, 64, (50,)), 8)
    assert windows.shape == (6, 9) and torch.equal(windows[1, 0], windows[0, -1])
    stats = token_stats(model, windows, batch_size=4)
    with torch.no_grad():
        logits = model(windows[:, :-1]).flatten(1, 2)
    targets = windows[:, 1:].reshape(-1)
    for g in range(2):
        ce = F.cross_entropy(logits[g], targets, reduction="none").numpy()
        assert np.allclose(stats["nll"][g], ce, atol=1e-5)
        assert np.array_equal(stats["correct"][g], (logits[g].argmax(-1) == targets).numpy())
        assert np.allclose(stats["maxprob"][g], logits[g].softmax(-1).max(-1).values.numpy(), atol=1e-6)
    summary = summarize(stats, [4, 16])
    assert summary["ppl"]["4"] == pytest.approx(math.exp(stats["nll"][0].astype(np.float64).mean()))


def test_decoding_costs_tied_pay_the_final_size_separate_pay_every_head():
    thr = np.array([0.5, np.inf])
    assert decoding_costs([8, 16, 32], 10, tied=True).per_answer(thr).tolist() == [80, 160, 320]
    assert decoding_costs([8, 16, 32], 10, tied=False).per_answer(thr).tolist() == [80, 240, 400]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus_file):
    run = make_run(tmp_path_factory.mktemp("runs") / "mrl-e", corpus_file, steps=20)
    train(run, progress=False)
    return run


def test_evaluate_and_fit_adaptive(trained):
    summary = evaluate_run(trained, progress=False)
    assert summary["nesting"] == [4, 8, 16] and read_json(trained / "eval.json") == summary
    result = fit_adaptive(trained, tolerance=0.05)
    chosen, full = result["chosen"], result["full"]
    assert full["head_macs_per_token"] == 16 * 64
    assert chosen["head_macs_per_token"] <= full["head_macs_per_token"]
    assert chosen["flops_reduction"] == pytest.approx(full["head_macs_per_token"] / chosen["head_macs_per_token"])
    assert sum(chosen["share_per_size"]) == pytest.approx(1.0)
    costs = [p["head_macs_per_token"] for p in result["curve"]]
    # the front runs from 'every token at the smallest head' to (at most) the full head's cost
    assert costs[0] == 4 * 64 and max(costs) <= 16 * 64 and len(costs) >= 2


def test_fit_adaptive_needs_several_sizes(tmp_path, corpus_file):
    run = make_run(tmp_path / "ff", corpus_file, head="ff", nesting=(8,), steps=2)
    train(run, progress=False)
    evaluate_run(run, progress=False)
    with pytest.raises(MRLError, match=r"adaptive decoding needs a model with several head sizes"):
        fit_adaptive(run)
    model, tok = load_model(run), LMTokenizer.load(run / "tokenizer.json")
    out = generate(model, tok, "the", max_new_tokens=3, stop_at_end=False)
    assert out.sizes == [8] * 3 and out.head_macs_per_token == 8 * 64 + 16 * 8  # head + d -> m projection


def test_generate_fixed_and_adaptive(trained):
    model, tok = load_model(trained), LMTokenizer.load(trained / "tokenizer.json")
    small = generate(model, tok, "the cat", max_new_tokens=6, size=4, stop_at_end=False, seed=1)
    assert small.sizes == [4] * 6 and small.head_macs_per_token == 4 * 64
    assert small.text.startswith("the cat") and len(small.new_ids) == 6
    # threshold 0: the smallest head always stops; above 1: the largest always answers
    low = generate(model, tok, "the cat", max_new_tokens=6, thresholds=[0.0, 0.0], stop_at_end=False, temperature=0)
    high = generate(model, tok, "the cat", max_new_tokens=6, thresholds=[2.0, 2.0], stop_at_end=False, temperature=0)
    assert low.sizes == [4] * 6 and high.sizes == [16] * 6
    assert high.head_macs_per_token == 16 * 64  # tied blocks: stopping at 16 costs 16 x V in all
    greedy_full = generate(model, tok, "the cat", max_new_tokens=6, size=16, stop_at_end=False, temperature=0)
    greedy_small = generate(model, tok, "the cat", max_new_tokens=6, size=4, stop_at_end=False, temperature=0)
    assert high.new_ids == greedy_full.new_ids and low.new_ids == greedy_small.new_ids
    assert generate(model, tok, "", max_new_tokens=3, stop_at_end=False).new_ids  # empty prompt: a new document


def test_generate_errors(trained):
    model, tok = load_model(trained), LMTokenizer.load(trained / "tokenizer.json")
    with pytest.raises(MRLError, match=r"cannot encode: '☃' \(U\+2603\)"):
        generate(model, tok, "the ☃")
    with pytest.raises(MRLError, match=r"size must be one of the model's head sizes \[4, 8, 16\], got 5"):
        generate(model, tok, "the", size=5)
    with pytest.raises(MRLError, match="not both"):
        generate(model, tok, "the", size=4, thresholds=[0.5, 0.5])
    with pytest.raises(MRLError, match=r"need 2 thresholds"):
        generate(model, tok, "the", thresholds=[0.5])
    with pytest.raises(MRLError, match="max_new_tokens must be a positive integer, got 0"):
        generate(model, tok, "the", max_new_tokens=0)


def test_cli_train_eval_generate(tmp_path, corpus_file):
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["lm", "train", "--corpus", str(corpus_file), "--out", str(out), "--head", "mrl-e", "--nesting", "4,8,16",
            "--vocab-size", "64", "--d-model", "16", "--layers", "1", "--n-heads", "2", "--context", "8",
            "--steps", "4", "--batch-size", "4", "--quiet"]
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert {"config.json", "tokenizer.json", "model.safetensors", "checkpoint-0000004.safetensors", "metrics.jsonl",
            "manifest.json"} <= {p.name for p in out.iterdir()}
    assert read_json(out / "config.json")["model"]["nesting"] == [4, 8, 16]
    again = runner.invoke(cli, args)
    assert again.exit_code == 1 and "already holds a run; pass --resume" in again.output
    assert runner.invoke(cli, [*args, "--resume"], catch_exceptions=False).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for extra, match in ((["--d-model", "64"], "changes d_model 64 (the run has 16)"), (["--steps", "9"], "changes steps 9 (the run has 4)"),
                         (["--nesting", "4,16"], "changes nesting [4, 16] (the run has [4, 8, 16])")):
        result = runner.invoke(cli, [*args, "--resume", *extra])  # these were ignored: exit 0, nothing trained
        assert result.exit_code == 1 and match in result.output and result.output.count("\n") == 1, result.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    result = runner.invoke(cli, ["lm", "eval", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0 and "adaptive: perplexity" in result.output
    assert (out / "adaptive.json").exists()
    result = runner.invoke(cli, ["lm", "generate", str(out), "--prompt", "the dog", "--adaptive", "--max-new-tokens", "5"],
                           catch_exceptions=False)
    assert result.exit_code == 0 and result.output.startswith("the dog") and "head multiply-adds per token" in result.output
    result = runner.invoke(cli, ["lm", "generate", str(out), "--prompt", "snow ☃"])
    assert result.exit_code == 1 and "Error: text contains characters the tokenizer cannot encode: '☃'" in result.output
    result = runner.invoke(cli, ["lm", "generate", str(out), "--prompt", "a\udcff"])  # a non-UTF-8 byte, as the shell passes it
    assert result.exit_code == 1 and result.output == "Error: --prompt must be UTF-8 text; it holds bytes that are not: a\\udcff\n"
    # one window of 8 tokens cannot be split into a fit and a report half: refused before eval.json is replaced
    before = {name: (out / name).read_bytes() for name in ("eval.json", "token_stats.npz", "adaptive.json", "manifest.json")}
    result = runner.invoke(cli, ["lm", "eval", str(out), "--quiet", "--max-tokens", "8"])
    assert result.exit_code == 1 and "raise --max-tokens to at least 16 (the run's files are unchanged)" in result.output, result.output
    assert "Warning" not in result.output and {name: (out / name).read_bytes() for name in before} == before
    ff = tmp_path / "ff"
    result = runner.invoke(cli, ["lm", "train", "--corpus", str(corpus_file), "--out", str(ff), "--head", "ff", "--ff-size", "8",
                                 "--tokens-from", str(out), "--vocab-size", "64", "--d-model", "16", "--layers", "1",
                                 "--n-heads", "2", "--context", "8", "--steps", "2", "--batch-size", "4", "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0 and read_json(ff / "config.json")["model"]["nesting"] == [8]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["lm", "train", "--corpus", "nonesuch", "--out", "X"], "Error: unknown corpus 'nonesuch'"),
        (["lm", "train", "--head", "ff", "--out", "X"], "Error: an ff model needs --ff-size M"),
        (["lm", "train", "--ff-size", "8", "--out", "X"], "Error: --ff-size applies to --head ff only"),
        (["lm", "train", "--nesting", "8,4", "--out", "X"], r"Error: nesting must be strictly ascending, got [8, 4]"),
        (["lm", "train", "--threads", "0", "--out", "X"], "Error: --threads must be an integer >= 1 and <= 4096, got 0"),
    ],
)
def test_cli_train_errors(tmp_path, args, message):
    result = CliRunner().invoke(cli, [a.replace("X", str(tmp_path / "x")) for a in args])
    assert result.exit_code == 1 and message in result.output, result.output


def test_cli_empty_corpus_and_missing_adaptive(tmp_path, trained):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    result = CliRunner().invoke(cli, ["lm", "train", "--corpus", str(empty), "--out", str(tmp_path / "r")])
    assert result.exit_code == 1 and "has no text" in result.output
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "tokenizer.json", "model.safetensors", "tokens_train.npy", "tokens_val.npy"):
        (bare / name).write_bytes((trained / name).read_bytes())
    result = CliRunner().invoke(cli, ["lm", "generate", str(bare), "--adaptive"])
    assert result.exit_code == 1 and "is not an LM run directory (no valid manifest.json)" in result.output
    write_manifest(bare, "lm-run", ["config.json", "tokenizer.json", "model.safetensors", "tokens_train.npy", "tokens_val.npy"])
    result = CliRunner().invoke(cli, ["lm", "generate", str(bare), "--adaptive"])
    assert result.exit_code == 1 and "has no adaptive.json; run `mrl lm eval" in result.output


def test_cli_config_file_then_flags(tmp_path, trained):
    out = tmp_path / "again"
    result = CliRunner().invoke(cli, ["lm", "train", "--config", str(trained / "config.json"), "--steps", "2",
                                      "--tokens-from", str(trained), "--out", str(out), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    saved, source = read_json(out / "config.json"), read_json(trained / "config.json")
    assert saved["model"] == source["model"] and saved["corpus"] == source["corpus"]
    assert saved["train"] == {**source["train"], "steps": 2}
    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"width": 3}}')
    result = CliRunner().invoke(cli, ["lm", "train", "--config", str(bad), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and "unknown model config key(s) ['width']" in result.output


def test_foreign_or_missing_run_dir_is_refused(tmp_path):
    from click.testing import CliRunner

    from mrl.cli import cli

    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "config.json").write_text('{"mode": "mrl", "nesting": [8, 16]}')  # a classification run
    for args, message in (
        (["eval", str(tmp_path / "cls")], "is not an LM run directory (no valid manifest.json)"),
        (["generate", str(tmp_path), "--prompt", "a"], "is not an LM run directory (no valid manifest.json)"),
        (["eval", str(tmp_path / "missing")], "does not exist"),
    ):
        result = CliRunner().invoke(cli, ["lm", *args], catch_exceptions=False)
        assert result.exit_code != 0 and message in result.output, result.output
