"""Models -> spaces: run a PyTorch model over data once and capture named layers.

:func:`extract` (:mod:`.run`) drives it; :mod:`.sources` loads models and data, :mod:`.capture`
hooks and pools layer outputs, :mod:`.store` writes the shards and resumes, :mod:`.text`
handles sentence-transformers models. torch is imported on first use, not here.
"""

from __future__ import annotations

from .run import ExtractResult, extract, inspect_layers

__all__ = ["extract", "inspect_layers", "ExtractResult"]
