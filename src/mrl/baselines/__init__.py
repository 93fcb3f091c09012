"""Baselines of the MRL paper's comparison (section 4.1, Figure 2, Tables 1-2).

FF (one model per size) is a plain ``mrl train --mode ff`` run; the rest live here: SVD and random
feature selection on a trained FF-d representation (each with a linear probe), slimmable networks,
and MRL retro-fitted onto a frozen FF-d model.
"""

from mrl.baselines.linear_probe import LinearProbe
from mrl.baselines.random_features import RandomFeatures, draw_seed
from mrl.baselines.retrofit import retrofit
from mrl.baselines.slimmable import SlimmableClassifier, evaluate_slimmable, slimmable_config, train_slimmable
from mrl.baselines.svd import SVDProjection

__all__ = [
    "LinearProbe",
    "RandomFeatures",
    "SVDProjection",
    "SlimmableClassifier",
    "draw_seed",
    "evaluate_slimmable",
    "retrofit",
    "slimmable_config",
    "train_slimmable",
]
