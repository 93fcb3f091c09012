"""A byte-level BPE tokenizer trained on the LM's own corpus (Hugging Face ``tokenizers``).

Byte-level BPE (GPT-2, Radford et al. 2019) decodes back to exactly the text it encoded. The
initial alphabet is only the bytes seen in the training text, not all 256: a prompt with a
character whose bytes the corpus never contained cannot be encoded, and :meth:`LMTokenizer.encode`
raises :class:`~mrl.errors.MRLError` naming those characters rather than silently emitting
``[UNK]`` (which the LM never saw as a target) or dropping them. Documents are separated by the
special token ``<|endoftext|>`` (id 0).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from mrl.errors import MissingExtraError, MRLError

try:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
except ImportError as exc:
    raise MissingExtraError(f"the Matryoshka LM needs the {exc.name!r} package: pip install 'mrl[lm]'") from exc
from mrl.io import atomic_write_text

EOT = "<|endoftext|>"
UNK = "[UNK]"


class LMTokenizer:
    """Thin wrapper over a ``tokenizers.Tokenizer`` with strict encoding.

    Example:
        >>> tok = LMTokenizer.train(["the cat sat on the mat", "a dog sat"] * 50, vocab_size=60)
        >>> tok.decode(tok.encode("the dog sat on a mat"))
        'the dog sat on a mat'
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.eot_id = tokenizer.token_to_id(EOT)
        self.unk_id = tokenizer.token_to_id(UNK)
        if self.eot_id is None or self.unk_id is None:
            raise MRLError(f"tokenizer lacks the special tokens {EOT!r} and {UNK!r}; train it with LMTokenizer.train")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 4096) -> LMTokenizer:
        """Train byte-level BPE with ``vocab_size`` tokens (specials included) on ``texts``."""
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 8:
            raise MRLError(f"vocab_size must be an integer >= 8, got {vocab_size!r}")
        tok = Tokenizer(models.BPE(unk_token=UNK))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT, UNK], show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``.

        Raises:
            MRLError: ``text`` holds characters the tokenizer cannot encode (named in the message).
        """
        ids = self.tokenizer.encode(text).ids
        if self.unk_id in ids:
            bad = sorted({ch for ch in text if self.unk_id in self.tokenizer.encode(ch).ids})
            shown = ", ".join(f"{ch!r} (U+{ord(ch):04X})" for ch in bad)
            raise MRLError(f"text contains characters the tokenizer cannot encode: {shown}")
        return ids

    def encode_documents(self, documents: list[str]) -> list[int]:
        """One id stream: every document followed by ``<|endoftext|>``; unknown bytes are dropped.

        Training text is the tokenizer's own corpus, so only validation text of another corpus can
        hold unseen bytes; dropping them there (rather than failing) keeps evaluation possible.
        """
        out: list[int] = []
        for enc in self.tokenizer.encode_batch(documents):
            out.extend(i for i in enc.ids if i != self.unk_id)
            out.append(self.eot_id)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; ``<|endoftext|>`` is shown as a newline."""
        pieces, run = [], []
        for i in ids:
            if i == self.eot_id:
                pieces.append(self.tokenizer.decode(run) + "\n")
                run = []
            else:
                run.append(int(i))
        pieces.append(self.tokenizer.decode(run))
        return "".join(pieces)

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as JSON (atomically)."""
        atomic_write_text(path, self.tokenizer.to_str())

    @classmethod
    def load(cls, path: str | os.PathLike) -> LMTokenizer:
        """Read a tokenizer saved with :meth:`save`."""
        if not os.path.isfile(path):
            raise MRLError(f"tokenizer file not found: {path}")
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise MRLError(f"{path} is not a tokenizers JSON file ({exc})") from None
