"""Matryoshka text embedders: fine-tune a sentence-transformers model with MRL's nested loss.

MRL (Kusupati et al. 2022) trains every prefix z[:m] of an embedding to work on its own; for text
this is what sentence-transformers' MatryoshkaLoss, OpenAI's text-embedding-3 ``dimensions`` and
Nomic v1.5 ship. ``pairs.py`` reads (query, positive[, negative]) training pairs, ``model.py`` loads
the model offline, ``losses.py`` holds the nested in-batch ranking loss (gathered across ranks),
``train.py`` the resumable loop and run directory, ``evaluate.py`` retrieval at every size and the
funnel. The command line is ``mrl text train | embed | eval``.
"""

from mrl.text.evaluate import evaluate_embeddings, eval_task
from mrl.text.losses import TextPairLoss, gather_with_grad
from mrl.text.pairs import Pairs, load_pairs, read_pairs_jsonl
from mrl.text.train import TextTrainConfig, load_run_model, train_text

__all__ = [
    "Pairs",
    "TextPairLoss",
    "TextTrainConfig",
    "eval_task",
    "evaluate_embeddings",
    "gather_with_grad",
    "load_pairs",
    "load_run_model",
    "read_pairs_jsonl",
    "train_text",
]
