"""Spaces against spaces: how layers, checkpoints and models rearrange the same instances.

:func:`compare` (two spaces: per-point neighbourhood overlap, gained and lost neighbours,
label agreement, movers) and :func:`trajectory` (an ordered list of spaces: per-point label
agreement and depth), on the vectors, from each space's kNN graph; :mod:`.overlap` holds the
array measures.
"""

from __future__ import annotations

from .run import AGREEMENT, CompareResult, TrajectoryResult, compare, trajectory

__all__ = ["compare", "trajectory", "CompareResult", "TrajectoryResult", "AGREEMENT"]
