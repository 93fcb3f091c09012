import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mrl.errors import MRLError
from mrl.nesting import default_nesting, parse_nesting, truncate, validate_nesting


def test_default_nesting_is_the_papers():
    assert default_nesting(2048) == [8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    assert default_nesting(384) == [8, 16, 32, 64, 128, 256, 384]
    assert default_nesting(6) == [6]


@pytest.mark.parametrize(
    ("nesting", "dim", "match"),
    [
        ([16, 8], 64, r"strictly ascending, got \[16, 8\]"),
        ([8, 8], 64, "strictly ascending"),
        ([0, 8], 64, "must be positive"),
        ([-4, 8], 64, "must be positive"),
        ([8, 128], 64, "128 is larger than the representation size 64"),
        ([8, 2.5], 64, "must be integers"),
        ([], 64, "must not be empty"),
    ],
)
def test_validate_nesting_errors(nesting, dim, match):
    with pytest.raises(MRLError, match=match):
        validate_nesting(nesting, dim)


def test_parse_nesting():
    assert parse_nesting("8,16, 32", 32) == [8, 16, 32]
    assert parse_nesting(None, 64) == [8, 16, 32, 64]
    with pytest.raises(MRLError, match="comma-separated integers"):
        parse_nesting("8,x", 32)


def test_truncate_then_normalise_semantics():
    z = torch.tensor([[3.0, 4.0, 12.0], [0.0, 0.0, 1.0]])
    out = truncate(z, 2, normalize=True)
    assert torch.allclose(out[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(out[1], torch.zeros(2))  # zero prefix stays zero, no NaN
    assert torch.equal(truncate(z, 2), z[:, :2])
    with pytest.raises(MRLError, match=r"prefix size m must be an integer in \[1, 3\], got 4"):
        truncate(z, 4)


@given(st.integers(1, 16), st.integers(1, 16), st.booleans())
def test_truncate_is_idempotent(m1, m2, normalize):
    z = np.random.default_rng(m1 * 31 + m2).normal(size=(5, 16))
    small, large = sorted((m1, m2))
    once = truncate(z, small, normalize=normalize)
    twice = truncate(truncate(z, large, normalize=False), small, normalize=normalize)
    np.testing.assert_allclose(once, twice)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(once, axis=1), 1.0, rtol=1e-6)


def test_one_norm_floor_for_training_and_search():
    from mrl.retrieval._vectors import prefix

    # rows with prefix norms 0, below the floor, just above it, and ordinary
    z = np.array([[0.0, 0.0, 1.0], [3e-8, 4e-8, 1.0], [3e-6, 4e-6, 1.0], [3.0, 4.0, 1.0]], dtype=np.float32)
    searched = prefix(z, 2, "cosine")
    np.testing.assert_allclose(searched, truncate(z, 2, normalize=True), rtol=1e-6)
    np.testing.assert_allclose(searched, truncate(torch.from_numpy(z), 2, normalize=True).numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(searched, axis=1), [0.0, 0.05, 1.0, 1.0], rtol=1e-5)
