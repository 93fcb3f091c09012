"""A real, offline text retrieval task built from WordNet: find the dictionary entry of a usage.

Used to benchmark the post-hoc Matryoshka adapter (:mod:`mrl.adapter`; Matryoshka-Adaptor, Yoon et
al. 2024) on frozen sentence embeddings, in the spirit of the MRL paper's retrieval evaluation
(Kusupati et al. 2022, section 4.3: mAP@k / nDCG@k of every prefix size against exact search).

Construction (deterministic, documented so that numbers can be compared):

* Synsets: every WordNet 3.0 synset (Debian ``wordnet-base``) of the chosen parts of speech (by
  default all four) that has at least one example sentence in its gloss: 32,923 of 117,659.
* Query: the synset's first example sentence, e.g. "the unsullied snow of mountains".
* Document: the synset's dictionary entry, its lemmas then its definition,
  e.g. "unsullied: spotlessly clean and fresh". The lemma list makes the entry read like a real
  dictionary line; the query does not always contain a lemma (inflections, other senses).
* Relevance: exactly one relevant document per query, the entry of the same synset (graded
  relevance is not defined by WordNet); other senses of the same word are hard negatives.
* Split: the synsets are shuffled with ``seed`` and cut into a train part (``1 - test_fraction``)
  and a disjoint test part. Each part is its own retrieval problem: its queries search only its
  own documents. An adapter or PCA is fitted on the train part and evaluated on the test part, so
  no test query, test document or test pair is seen in fitting.

Example:
    >>> from mrl.data.wordnet import Synset
    >>> synsets = [Synset(i, "adj", "adj.all", (f"w{i}",), f"definition {i}", (f"use of w{i}",))
    ...            for i in range(10)]
    >>> task = build_wordnet_retrieval(synsets, test_fraction=0.3, seed=0)
    >>> len(task.train), len(task.test)
    (7, 3)
    >>> task.test.documents[0].startswith("w")
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mrl.data.wordnet import POS_FILES, Synset, load_synsets
from mrl.errors import MRLError


@dataclass(frozen=True)
class RetrievalSplit:
    """One part of the task: queries, documents and which document each query should find.

    ``query_labels[i] == document_labels[j]`` means document j is relevant to query i (the label is
    the synset's index in the full task, so labels are unique across parts). Here document j is the
    entry of synset ``document_labels[j]``, and query i belongs to document i.
    """

    queries: tuple[str, ...]
    documents: tuple[str, ...]
    query_labels: np.ndarray  # int64 [Q]
    document_labels: np.ndarray  # int64 [N]

    def __len__(self) -> int:
        return len(self.queries)


@dataclass(frozen=True)
class WordNetRetrieval:
    """The train and test parts, plus the parameters that built them."""

    train: RetrievalSplit
    test: RetrievalSplit
    pos: tuple[str, ...]
    seed: int
    test_fraction: float


def document_text(synset: Synset) -> str:
    """The dictionary entry of a synset: ``"lemma1, lemma2: definition"``."""
    return f"{', '.join(synset.lemmas)}: {synset.definition}"


def _split(synsets: Sequence[Synset], labels: np.ndarray) -> RetrievalSplit:
    return RetrievalSplit(
        queries=tuple(s.examples[0] for s in synsets),
        documents=tuple(document_text(s) for s in synsets),
        query_labels=labels.astype(np.int64),
        document_labels=labels.astype(np.int64),
    )


def build_wordnet_retrieval(
    synsets: Sequence[Synset] | None = None,
    pos: Sequence[str] = tuple(POS_FILES),
    test_fraction: float = 0.5,
    max_synsets: int | None = None,
    seed: int = 0,
) -> WordNetRetrieval:
    """Build the usage -> dictionary-entry retrieval task (see the module docstring).

    Args:
        synsets: synsets to use; defaults to :func:`mrl.data.wordnet.load_synsets` of ``pos``.
        pos: parts of speech to keep (noun, verb, adj, adv).
        test_fraction: share of the synsets in the test part, in (0, 1).
        max_synsets: keep only this many synsets (after shuffling) to make the task smaller.
        seed: seed of the shuffle that makes the split.

    Returns:
        The two disjoint parts; queries and documents are in the shuffled order.

    Raises:
        MRLError: an unknown part of speech, a fraction outside (0, 1), or too few synsets.
    """
    pos = tuple(pos)
    for p in pos:
        if p not in POS_FILES:
            raise MRLError(f"unknown part of speech {p!r}; choose from {', '.join(POS_FILES)}")
    if not 0.0 < test_fraction < 1.0:
        raise MRLError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if max_synsets is not None and max_synsets < 2:
        raise MRLError(f"max_synsets must be at least 2, got {max_synsets!r}")
    if synsets is None:
        synsets = load_synsets(pos=pos)
    usable = [s for s in synsets if s.pos in pos and s.examples]
    order = np.random.default_rng(seed).permutation(len(usable))
    if max_synsets is not None:
        order = order[:max_synsets]
    n_test = int(round(len(order) * test_fraction))
    if n_test < 1 or n_test >= len(order):
        raise MRLError(
            f"need at least one synset with an example in each part; got {len(order)} synsets "
            f"with test_fraction={test_fraction}"
        )
    labels = np.arange(len(order), dtype=np.int64)
    chosen = [usable[i] for i in order]
    n_train = len(order) - n_test
    return WordNetRetrieval(
        train=_split(chosen[:n_train], labels[:n_train]),
        test=_split(chosen[n_train:], labels[n_train:]),
        pos=pos,
        seed=seed,
        test_fraction=test_fraction,
    )
