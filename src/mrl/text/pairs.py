"""Training pairs for text embedders: (query, positive[, negative]) texts.

Three sources, all offline:

* ``"wordnet"``: the train part of :mod:`mrl.data.wordnet_retrieval` (usage sentence -> dictionary
  entry, split seed 0, half of the synsets), so the test part stays held out for evaluation;
* ``"jeopardy"``: the train part of :func:`mrl.data.jeopardy.question_answer_split` (clue ->
  answer, seed 0, half of the clues);
* a JSONL file, one object per line: ``{"query": str, "positive": str[, "negative": str]}``. Either
  every line has a negative or none does. A bad line is an error that names its line number.

Example:
    >>> pairs = Pairs(("a query",), ("its positive",))
    >>> len(pairs), pairs.negatives is None
    (1, True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from mrl.errors import MRLError

BUILTIN = ("wordnet", "jeopardy")
SPLIT_SEED = 0  # the seed of both built-in splits; evaluation uses the same one


@dataclass(frozen=True)
class Pairs:
    """Row i of ``queries`` is relevant to row i of ``positives`` (and not to ``negatives[i]``)."""

    queries: tuple[str, ...]
    positives: tuple[str, ...]
    negatives: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.queries)


def read_pairs_jsonl(path: str | Path) -> Pairs:
    """Read (query, positive[, negative]) pairs from a JSONL file.

    Raises:
        MRLError: missing or empty file, a line that is not an object of non-empty strings (named
            by its 1-based line number), or negatives on some lines only.
    """
    path = Path(path)
    if not path.is_file():
        raise MRLError(f"pairs file {path} not found (or choose one of {', '.join(BUILTIN)})")
    rows: list[tuple[str, str, str | None]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise MRLError(f"{path} is not UTF-8 text") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MRLError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not {"query", "positive"} <= set(record):
            raise MRLError(f"{path}, line {number}: expected an object with 'query' and 'positive' (and optionally 'negative')")
        extra = sorted(set(record) - {"query", "positive", "negative"})
        if extra:
            raise MRLError(f"{path}, line {number}: unknown key(s) {extra}; allowed: query, positive, negative")
        for key, value in record.items():
            if not isinstance(value, str) or not value.strip():
                raise MRLError(f"{path}, line {number}: {key!r} must be a non-empty string, got {value!r}")
        rows.append((record["query"], record["positive"], record.get("negative")))
    if not rows:
        raise MRLError(f"pairs file {path} holds no pairs")
    with_negative = sum(r[2] is not None for r in rows)
    if with_negative not in (0, len(rows)):
        raise MRLError(f"{path}: {with_negative} of {len(rows)} lines have a 'negative'; give one on every line or on none")
    queries, positives, negatives = zip(*rows)
    return Pairs(tuple(queries), tuple(positives), tuple(negatives) if with_negative else None)


def load_pairs(source: str) -> Pairs:
    """Training pairs from ``"wordnet"``, ``"jeopardy"`` or a JSONL path (see the module docstring)."""
    if source == "wordnet":
        from mrl.data.wordnet_retrieval import build_wordnet_retrieval

        train = build_wordnet_retrieval(seed=SPLIT_SEED).train
        return Pairs(train.queries, train.documents)
    if source == "jeopardy":
        from mrl.data.jeopardy import question_answer_split

        split = question_answer_split(seed=SPLIT_SEED).train
        return Pairs(split.queries, tuple(split.documents[i] for i in split.query_labels))
    return read_pairs_jsonl(source)
