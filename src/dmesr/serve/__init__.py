"""Serving: top-K recommendations from a trained run (`Recommender`, `dmesr recommend`,
`dmesr serve`)."""

from dmesr.serve.recommender import Recommender, TopK

__all__ = ["Recommender", "TopK"]
