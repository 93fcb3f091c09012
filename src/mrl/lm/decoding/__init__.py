"""Text generation from a Matryoshka LM at a fixed head size or adaptively (per token)."""

from mrl.lm.decoding.generate import Generation, generate, parse_thresholds

__all__ = ["Generation", "generate", "parse_thresholds"]
