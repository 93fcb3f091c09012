"""The shared training loop (mrl.loop) against a hand-written reference loop."""

from __future__ import annotations

import json

import pytest
import torch

from mrl.errors import MRLError
from mrl.loop import Loop, Position, log_once, set_learning_rate

EPOCHS, STEPS, BATCH = 3, 4, 8


def _problem():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(EPOCHS * STEPS * BATCH, 5, generator=generator)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.1
    return x, y


def _batches(x, y):
    def batches(epoch, first):
        for i in range(first, STEPS):
            rows = slice((epoch * STEPS + i) * BATCH, (epoch * STEPS + i + 1) * BATCH)
            yield x[rows], y[rows]
    return batches


def _lr(step: int) -> float:
    return 0.1 / (1 + step)


def _loop(model, optimizer, **kw):
    def backward(batch, step):
        xb, yb = batch
        loss = torch.nn.functional.mse_loss(model(xb).squeeze(-1), yb)
        if torch.isfinite(loss):
            loss.backward()
        return loss.detach(), torch.stack([loss.detach(), loss.detach() * 2])

    return Loop(optimizer, _lr, backward, ["mse", "twice"], progress=False, **kw)


def _fresh():
    torch.manual_seed(1)
    model = torch.nn.Linear(5, 1)
    return model, torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)


def test_the_loop_equals_a_plain_loop_and_averages_each_epoch():
    x, y = _problem()
    model, optimizer = _fresh()
    means = []
    end = _loop(model, optimizer).run(_batches(x, y), EPOCHS, STEPS,
                                      end_epoch=lambda position, mean: means.append((position, mean)))
    assert end == Position(EPOCHS, EPOCHS * STEPS)

    ref, ref_opt = _fresh()
    ref_means = []
    for epoch in range(EPOCHS):
        losses = []
        for i in range(STEPS):
            for group in ref_opt.param_groups:
                group["lr"] = _lr(epoch * STEPS + i)
            ref_opt.zero_grad()
            rows = slice((epoch * STEPS + i) * BATCH, (epoch * STEPS + i + 1) * BATCH)
            loss = torch.nn.functional.mse_loss(ref(x[rows]).squeeze(-1), y[rows])
            loss.backward()
            ref_opt.step()
            losses.append(loss.item())
        ref_means.append(sum(losses) / STEPS)
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    assert [p for p, _ in means] == [Position(e + 1, (e + 1) * STEPS) for e in range(EPOCHS)]
    assert [m[0].item() for _, m in means] == pytest.approx(ref_means, rel=1e-6)
    assert [m[1].item() for _, m in means] == pytest.approx([2 * v for v in ref_means], rel=1e-6)


def test_stopping_and_resuming_mid_epoch_ends_where_an_uninterrupted_run_does():
    x, y = _problem()
    whole, whole_opt = _fresh()
    _loop(whole, whole_opt).run(_batches(x, y), EPOCHS, STEPS)

    model, optimizer = _fresh()
    saved = []
    loop = _loop(model, optimizer, checkpoint=saved.append, checkpoint_every=3)
    stopped = loop.run(_batches(x, y), EPOCHS, STEPS, stop_at=5)
    assert stopped == Position(1, 5) and saved == [Position(0, 3), Position(1, 5)]
    loop.run(_batches(x, y), EPOCHS, STEPS, start=stopped)
    assert [p.step for p in saved] == [3, 5, 6, 9, 12]
    for a, b in zip(model.parameters(), whole.parameters()):
        assert torch.equal(a, b)


def test_epoch_checkpoints_follow_their_metrics_line(tmp_path):
    x, y = _problem()
    model, optimizer = _fresh()
    metrics = tmp_path / "metrics.jsonl"
    lines_at_checkpoint = []

    def checkpoint(position):
        lines_at_checkpoint.append(len(metrics.read_text().splitlines()))

    _loop(model, optimizer, metrics=metrics, checkpoint=checkpoint).run(
        _batches(x, y), EPOCHS, STEPS, end_epoch=lambda position, mean: {"epoch": position.epoch, "mse": mean[0].item()})
    assert lines_at_checkpoint == [1, 2, 3]
    assert [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()] == [1, 2, 3]


def test_a_non_finite_loss_stops_before_the_optimizer_steps():
    x, y = _problem()
    y[2 * BATCH] = float("nan")  # the third batch of epoch 1
    model, optimizer = _fresh()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(MRLError, match=r"^training diverged at epoch 1, step 2: loss is nan; lower --lr$"):
        _loop(model, optimizer).run(_batches(x, y), EPOCHS, STEPS)
    # the two good steps were taken, the poisoned one was not
    assert not any(torch.equal(a, b) for a, b in zip(model.parameters(), before))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    model, optimizer = _fresh()
    with pytest.raises(MRLError, match=r"^training diverged at step 3: loss is nan; lower --lr$"):
        _loop(model, optimizer, checkpoint_every=10).run(_batches(x, y), EPOCHS, STEPS)  # step-based: counted from 1


def test_too_few_batches_are_refused():
    x, y = _problem()
    model, optimizer = _fresh()
    with pytest.raises(MRLError, match="epoch 1 yielded 2 batches, fewer than the 4 expected"):
        _loop(model, optimizer).run(lambda epoch, first: iter([(x[:BATCH], y[:BATCH])] * 2), EPOCHS, STEPS)


def test_log_once_keeps_one_line_per_key(tmp_path):
    path = tmp_path / "m.jsonl"
    assert log_once(path, "epoch", {"epoch": 1, "loss": 0.5})
    assert not log_once(path, "epoch", {"epoch": 1, "loss": 0.4})
    assert log_once(path, "epoch", {"epoch": 2, "loss": 0.3})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"epoch": 1, "loss": 0.5},
                                                                          {"epoch": 2, "loss": 0.3}]


def test_learning_rate_follows_each_groups_scale():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [a], "lr_scale": 0.5}, {"params": [b]}], lr=1.0)
    set_learning_rate(optimizer, 0.2)
    assert [g["lr"] for g in optimizer.param_groups] == [0.1, 0.2]


def test_metrics_log_is_read_once_per_key_however_many_steps(tmp_path, monkeypatch):
    # Each step's line used to re-read (and rewrite) the whole log: quadratic in the steps of a run.
    import mrl.loop

    reads = []
    real = mrl.loop.read_jsonl
    monkeypatch.setattr(mrl.loop, "read_jsonl", lambda path: reads.append(path) or real(path))
    x, y = _problem()
    model, optimizer = _fresh()
    path = tmp_path / "metrics.jsonl"
    _loop(model, optimizer, metrics=path).run(
        _batches(x, y), EPOCHS, STEPS, end_step=lambda position, values: {"step": position.step})
    assert len(reads) == 1
    assert [r["step"] for r in real(path)] == list(range(1, EPOCHS * STEPS + 1))
