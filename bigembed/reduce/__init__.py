"""2-D layouts of a space and their quality: :func:`reduce` (:mod:`.run`), the layout backends
(:mod:`.backends`), PCA (:mod:`.pca`) and layout-quality measures (:mod:`.quality`)."""

from __future__ import annotations

from .run import METHODS, METRICS, ReduceResult, reduce

__all__ = ["reduce", "ReduceResult", "METHODS", "METRICS"]
