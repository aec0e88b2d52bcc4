"""Models -> spaces: run a PyTorch model over data once and capture named layers.

:func:`extract` (:mod:`.run`) drives it; :mod:`.sources` loads models and data, :mod:`.capture`
hooks and pools layer outputs, :mod:`.store` writes the shards and resumes, :mod:`.text`
handles sentence-transformers models, :mod:`.recorder` takes snapshots from a training loop. torch is imported on first use, not here.
"""

from __future__ import annotations

from .recorder import Recorder
from .run import ExtractResult, extract, inspect_layers, load_checkpoint

__all__ = ["extract", "inspect_layers", "load_checkpoint", "ExtractResult", "Recorder"]
