"""The WordNet usage -> dictionary-entry retrieval task: sizes, disjoint split, determinism, texts."""

from __future__ import annotations

import numpy as np
import pytest

from mrl.data.wordnet import WORDNET_DIR, Synset
from mrl.data.wordnet_retrieval import build_wordnet_retrieval, document_text
from mrl.errors import MRLError


def _synsets(n=20):
    return [
        Synset(i, "noun" if i % 2 else "verb", "noun.Tops", (f"w{i}", f"v{i}"), f"meaning {i}", (f"we used w{i}", "second"))
        for i in range(n)
    ] + [Synset(100, "noun", "noun.Tops", ("bare",), "no example", ())]


def test_split_is_disjoint_deterministic_and_aligned():
    task = build_wordnet_retrieval(_synsets(), test_fraction=0.25, seed=3)
    assert (len(task.train), len(task.test)) == (15, 5)
    assert not set(task.train.documents) & set(task.test.documents)
    assert len(set(task.train.documents) | set(task.test.documents)) == 20  # the synset without example is out
    for part in (task.train, task.test):
        np.testing.assert_array_equal(part.query_labels, part.document_labels)
        for q, d in zip(part.queries, part.documents):
            i = q.split("w")[-1]
            assert d == f"w{i}, v{i}: meaning {i}"  # query i's relevant document is document i
    again = build_wordnet_retrieval(_synsets(), test_fraction=0.25, seed=3)
    assert again.test.queries == task.test.queries
    other = build_wordnet_retrieval(_synsets(), test_fraction=0.25, seed=4)
    assert other.test.queries != task.test.queries


def test_pos_filter_and_max_synsets():
    task = build_wordnet_retrieval(_synsets(), pos=("verb",), test_fraction=0.5)
    assert len(task.train) + len(task.test) == 10
    small = build_wordnet_retrieval(_synsets(), test_fraction=0.5, max_synsets=6)
    assert (len(small.train), len(small.test)) == (3, 3)


def test_document_text():
    s = Synset(1, "adj", "adj.all", ("unsullied",), "spotlessly clean and fresh", ("the unsullied snow",))
    assert document_text(s) == "unsullied: spotlessly clean and fresh"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pos": ("nouns",)}, "unknown part of speech 'nouns'"),
        ({"test_fraction": 1.0}, r"test_fraction must be in \(0, 1\), got 1.0"),
        ({"max_synsets": 1}, "max_synsets must be at least 2, got 1"),
        ({"test_fraction": 0.01}, "need at least one synset with an example in each part"),
    ],
)
def test_errors(kwargs, message):
    with pytest.raises(MRLError, match=message):
        build_wordnet_retrieval(_synsets(), **kwargs)


@pytest.mark.skipif(not (WORDNET_DIR / "data.noun").is_file(), reason="WordNet (wordnet-base) not installed")
def test_real_wordnet_sizes():
    task = build_wordnet_retrieval()
    assert (len(task.train), len(task.test)) == (16461, 16462)
    assert len(set(task.test.documents)) > 16000
    assert all(q and d for q, d in zip(task.test.queries[:100], task.test.documents[:100]))
