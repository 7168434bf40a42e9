"""Small numpy networks and data sets used by ``gradwatch demo``, the examples and the tests.

Pure numpy, no download: the data sets are generated from a seed.
"""

from gradwatch.demo.classic import ClassicBugs, classic_backward, classic_forward, classic_test_case
from gradwatch.demo.data import make_blobs
from gradwatch.demo.mlp import MLP

__all__ = [
    "MLP",
    "ClassicBugs",
    "classic_backward",
    "classic_forward",
    "classic_test_case",
    "make_blobs",
]
