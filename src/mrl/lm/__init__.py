"""Matryoshka language modelling: a small decoder-only transformer whose output layer predicts the
next token at every nesting size (MRL, MRL-E tied to the input embedding, FF baselines), per-size
perplexity, and adaptive decoding that uses a small head when it is confident.

The MRL paper (Kusupati et al., NeurIPS 2022) nests classification heads; next-token prediction is
a sequential classification over the vocabulary, and in a small LM the output layer dominates.
"""

from mrl.lm.corpus import CORPORA, Corpus, load_corpus
from mrl.lm.decoding import Generation, generate
from mrl.lm.evaluate import evaluate_run, fit_adaptive, token_stats
from mrl.lm.model import HEAD_KINDS, LMConfig, MatryoshkaLM
from mrl.lm.tokenizer import LMTokenizer
from mrl.lm.train import TrainConfig, load_model, prepare_run, train

__all__ = [
    "CORPORA",
    "HEAD_KINDS",
    "Corpus",
    "Generation",
    "LMConfig",
    "LMTokenizer",
    "MatryoshkaLM",
    "TrainConfig",
    "evaluate_run",
    "fit_adaptive",
    "generate",
    "load_corpus",
    "load_model",
    "prepare_run",
    "token_stats",
    "train",
]
