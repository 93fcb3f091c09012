import pytest
import torch
from torch.nn import functional as F

from mrl.errors import MRLError
from mrl.heads import MatryoshkaLinear, nested_logits

NESTING = [4, 8, 16, 32]


def test_tied_logits_equal_slicing_one_weight():
    torch.manual_seed(0)
    head = MatryoshkaLinear(32, 7, NESTING, tied=True)
    z = torch.randn(10, 32)
    out = head(z)
    assert out.shape == (4, 10, 7)
    for g, m in enumerate(NESTING):
        expected = F.linear(z[:, :m], head.weight[:, :m], head.bias[g])
        torch.testing.assert_close(out[g], expected, atol=1e-5, rtol=1e-5)


def test_untied_logits_equal_separate_linears():
    torch.manual_seed(0)
    head = MatryoshkaLinear(32, 7, NESTING, tied=False)
    z = torch.randn(10, 32)
    out = head(z)
    for g, m in enumerate(NESTING):
        torch.testing.assert_close(out[g], head.heads[g](z[:, :m]))
        assert head.heads[g].in_features == m


def test_tied_head_has_about_one_full_head_of_parameters():
    tied = sum(p.numel() for p in MatryoshkaLinear(2048, 10, [8, 16, 32, 64, 128, 256, 512, 1024, 2048], tied=True).parameters())
    untied = sum(p.numel() for p in MatryoshkaLinear(2048, 10, [8, 16, 32, 64, 128, 256, 512, 1024, 2048]).parameters())
    assert tied == 10 * 2048 + 9 * 10
    assert untied == 10 * (8 + 16 + 32 + 64 + 128 + 256 + 512 + 1024 + 2048) + 9 * 10
    assert tied < 0.51 * untied


@pytest.mark.parametrize("tied", [False, True])
def test_gradients_reach_every_prefix_and_parameter(tied):
    torch.manual_seed(0)
    head = MatryoshkaLinear(32, 5, NESTING, tied=tied)
    z = torch.randn(6, 32, requires_grad=True)
    for g in range(len(NESTING)):
        head.zero_grad()
        z.grad = None
        head(z)[g].sum().backward()
        m = NESTING[g]
        assert z.grad[:, :m].abs().sum() > 0
        assert torch.all(z.grad[:, m:] == 0)  # size m only sees its prefix
    head.zero_grad()
    head(z).sum().backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_nested_logits_on_sequences():
    z, w = torch.randn(2, 3, 16), torch.randn(9, 16)
    out = nested_logits(z, w, [4, 16])
    assert out.shape == (2, 2, 3, 9)
    torch.testing.assert_close(out[0], z[..., :4] @ w[:, :4].T)


def test_head_errors():
    with pytest.raises(MRLError, match="nesting size 64 is larger than the representation size 32"):
        MatryoshkaLinear(32, 5, [8, 64])
    with pytest.raises(MRLError, match="num_classes must be a positive integer"):
        MatryoshkaLinear(32, 0, [8])
    with pytest.raises(MRLError, match=r"expected representations of size 32, got shape \(4, 16\)"):
        MatryoshkaLinear(32, 5, [8, 32])(torch.randn(4, 16))
