"""Offline text corpora for the Matryoshka LM, with a fixed train/validation split.

The default corpus is WordNet 3.0 (Debian's ``wordnet-base``, read by :mod:`mrl.data.wordnet`):
117,659 synsets whose glosses and example sentences make ~8.6 MB of edited English, installed on
the machine, so nothing is downloaded at run time. Unlike the Python standard library's sources it
is natural language, which is what the paper's BERT experiments (section 4.3) nest. One synset is
one document: ``"lemma: definition; example; example"``.

Any text file or folder of ``*.txt`` files (read in sorted order) also works; there a document is
a non-empty paragraph (text between blank lines).

Split: document i (in file order) goes to validation when ``i % 20 == 19`` (5%), else to training.
Interleaving rather than a tail cut keeps both halves drawn from every part of speech and topic.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from mrl.data.wordnet import load_synsets
from mrl.errors import MRLError

CORPORA = ("wordnet",)
VAL_EVERY = 20  # document i is validation when i % VAL_EVERY == VAL_EVERY - 1


@dataclass(frozen=True)
class Corpus:
    """Documents of a corpus, split into training and validation.

    Attributes:
        name: the corpus name or path it was loaded from.
        train: training documents.
        val: validation documents.
    """

    name: str
    train: list[str]
    val: list[str]


def split_documents(documents: list[str], name: str) -> Corpus:
    """Apply the fixed split (every 20th document to validation).

    Example:
        >>> c = split_documents([f"doc {i}" for i in range(40)], "toy")
        >>> len(c.train), c.val
        (38, ['doc 19', 'doc 39'])
    """
    documents = [d for d in documents if d.strip()]
    if not documents:
        raise MRLError(f"corpus {name!r} has no text")
    val = [d for i, d in enumerate(documents) if i % VAL_EVERY == VAL_EVERY - 1]
    train = [d for i, d in enumerate(documents) if i % VAL_EVERY != VAL_EVERY - 1]
    if not val:
        raise MRLError(f"corpus {name!r} has {len(documents)} document(s); need at least {VAL_EVERY} for a validation split")
    return Corpus(name, train, val)


def wordnet_documents(wordnet_dir: str | os.PathLike | None = None) -> list[str]:
    """One document per WordNet synset: ``"lemma: definition; example; ..."``."""
    docs = []
    for s in load_synsets(wordnet_dir):
        docs.append("; ".join([f"{s.lemmas[0]}: {s.definition}", *s.examples]))
    return docs


def text_documents(path: str | os.PathLike) -> list[str]:
    """Paragraphs of a text file, or of every ``*.txt`` file under a folder (sorted)."""
    path = Path(path)
    files = sorted(path.rglob("*.txt")) if path.is_dir() else [path]
    if not files:
        raise MRLError(f"corpus folder {path} holds no .txt files")
    docs = []
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")
        docs.extend(p.strip() for p in re.split(r"\n\s*\n", text) if p.strip())
    return docs


def load_corpus(name_or_path: str, wordnet_dir: str | os.PathLike | None = None) -> Corpus:
    """Load a named corpus (``"wordnet"``) or a text file / folder, split train / validation.

    Raises:
        MRLError: unknown name that is not an existing path; a corpus without text.

    Example:
        >>> corpus = load_corpus("wordnet")
        >>> len(corpus.train), len(corpus.val)
        (111777, 5882)
    """
    if name_or_path in CORPORA:
        return split_documents(wordnet_documents(wordnet_dir), name_or_path)
    if not Path(name_or_path).exists():
        raise MRLError(f"unknown corpus {name_or_path!r}: not one of {', '.join(CORPORA)} and not an existing file or folder")
    return split_documents(text_documents(name_or_path), str(name_or_path))
