import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mrl.errors import MRLError
from mrl.heads import MatryoshkaLinear
from mrl.losses import MatryoshkaLoss

NESTING = [4, 8, 16]


def test_loss_equals_hand_written_weighted_sum():
    torch.manual_seed(0)
    head = MatryoshkaLinear(16, 5, NESTING)
    z, y = torch.randn(12, 16), torch.randint(0, 5, (12,))
    weights = [0.5, 1.0, 2.0]
    value = MatryoshkaLoss(nesting=NESTING, weights=weights)(head(z), y)
    expected = sum(w * F.cross_entropy(head.heads[g](z[:, :m]), y) for g, (w, m) in enumerate(zip(weights, NESTING)))
    torch.testing.assert_close(value, expected)


@pytest.mark.parametrize("base", [nn.CrossEntropyLoss(ignore_index=2), nn.CrossEntropyLoss(label_smoothing=0.1)])
def test_fused_cross_entropy_matches_one_call_per_size(base):
    torch.manual_seed(1)
    logits, y = torch.randn(3, 12, 5, requires_grad=True), torch.randint(0, 5, (12,))
    fused = MatryoshkaLoss(base, NESTING).per_size(logits, y)
    looped = torch.stack([base(logits[g], y) for g in range(3)])
    torch.testing.assert_close(fused, looped)
    (g_fused,) = torch.autograd.grad(fused.sum(), logits)
    (g_looped,) = torch.autograd.grad(looped.sum(), logits)
    torch.testing.assert_close(g_fused, g_looped)


def test_default_weights_are_one_and_follow_the_module():
    loss = MatryoshkaLoss(nesting=NESTING)
    assert "weights" in dict(loss.named_buffers())
    assert torch.equal(loss.weights, torch.ones(3))
    assert loss.to(torch.float64).weights.dtype == torch.float64


def test_truncating_contrastive_loss_on_embeddings():
    def info_nce(q, d):
        logits = F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T / 0.05
        return F.cross_entropy(logits, torch.arange(len(q)))

    torch.manual_seed(0)
    q, d = torch.randn(8, 16), torch.randn(8, 16)
    value = MatryoshkaLoss(info_nce, NESTING, truncate=True)(q, d)
    expected = sum(info_nce(q[:, :m], d[:, :m]) for m in NESTING)
    torch.testing.assert_close(value, expected)


def test_labels_pass_through_uncut():
    seen = []

    def base(emb, labels):
        seen.append((emb.shape[-1], labels.shape))
        return emb.pow(2).mean()

    MatryoshkaLoss(base, NESTING, truncate=True)(torch.randn(4, 16), torch.tensor([0, 1, 0, 1]))
    assert seen == [(4, (4,)), (8, (4,)), (16, (4,))]


def test_loss_errors():
    with pytest.raises(MRLError, match="one value per nesting size"):
        MatryoshkaLoss(nesting=NESTING, weights=[1.0, 2.0])
    with pytest.raises(MRLError, match="finite and non-negative"):
        MatryoshkaLoss(nesting=NESTING, weights=[1.0, -1.0, 1.0])
    with pytest.raises(MRLError, match="strictly ascending"):
        MatryoshkaLoss(nesting=[8, 4])
    with pytest.raises(MRLError, match="expected 3 outputs"):
        MatryoshkaLoss(nesting=NESTING)(torch.randn(2, 4, 5), torch.zeros(4, dtype=torch.long))
    with pytest.raises(MRLError, match="smaller than the largest nesting size 16"):
        MatryoshkaLoss(nn.MSELoss(), NESTING, truncate=True)(torch.randn(4, 8), torch.randn(4, 8))
