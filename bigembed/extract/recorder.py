"""Snapshots from inside a training loop: the same probe set, one set of spaces per step.

::

    from bigembed.extract import Recorder

    rec = Recorder("runs/probe", probe_set, layers=["fc1"])
    for step in range(steps):
        ...  # train
        if step % 1000 == 0:
            rec.snapshot(model, tag=f"step{step}")

Each snapshot runs the model over the probe set (in eval mode, without gradients, on the
device the model is on) and adds the spaces ``fc1@step1000`` with the columns
``prediction@step1000``, ``confidence@step1000``, ``loss@step1000``, ``correct@step1000`` to
the dataset (created by the first snapshot); ``bigembed compare --spaces`` then follows the
probe set through training. The model is left as it was: its train/eval mode, its parameters'
gradients and device, and the random number generators the training loop draws from.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from ..errors import InputError
from .sources import torch

log = logging.getLogger(__name__)

__all__ = ["Recorder"]


class Recorder:
    """Takes snapshots of ``layers`` of a model over a fixed ``probe`` set into ``path``.

    probe: what :func:`bigembed.extract.extract` accepts as data and can read more than once
    (a map-style Dataset, a tensor of instances, ``"package.module:factory"``); its labels,
    when it has them, are stored once as ``label``. The other arguments are those of
    :func:`~bigembed.extract.extract` (pooling, batch size, storage dtype).
    """

    def __init__(self, path, probe, *, layers, pooling: str = "mean", batch_size: int = 256,
                 dtype: str = "float32", progress: bool | None = False):
        from .run import _check_rereadable

        if probe is None:
            raise InputError("probe is required: the fixed instances every snapshot runs on")
        _check_rereadable(probe)
        self.path = Path(path)
        self.probe = probe
        self.layers = layers
        self.pooling = pooling
        self.batch_size = batch_size
        self.dtype = dtype
        self.progress = progress
        self.tags: list[str] = []

    def snapshot(self, model, *, tag: str):
        """Add ``layer@tag`` spaces (and ``prediction@tag``... columns) for ``model`` as it is
        now; returns the :class:`~bigembed.extract.ExtractResult`. A tag already recorded
        with the same weights returns at once; with other weights it is refused."""
        from .run import extract

        t = torch()
        if not isinstance(model, t.nn.Module):
            raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        device = _device_of(model)
        training = [(m, m.training) for m in model.modules()]
        with _rng_kept(t, device):
            try:
                r = extract(model=model, data=self.probe, out=self.path, layers=self.layers,
                            pooling=self.pooling, batch_size=self.batch_size, device=device,
                            dtype=self.dtype, tag=tag, workers=0, progress=self.progress)
            finally:
                for m, was in training:  # per module: a frozen submodule stays in eval
                    m.training = was
        self.tags.append(tag)
        log.info("recorder: snapshot %s -> spaces %s of %s", tag, list(r.spaces), self.path)
        return r

    def spaces(self, layer: str | None = None) -> list[str]:
        """The spaces this recorder took, in order (of one ``layer``, or all)."""
        layers = self.layers.split(",") if isinstance(self.layers, str) else list(self.layers)
        return [f"{lay}@{t}" for t in self.tags for lay in layers
                if layer is None or lay == layer]


def _device_of(model) -> str:
    for p in model.parameters():
        kind = p.device.type
        if kind == "cuda" and p.device.index not in (None, 0):
            raise InputError(f"model is on {p.device}; the recorder runs models on cuda:0 or "
                             f"the CPU (move it, or record from a copy)")
        return "cuda" if kind == "cuda" else "cpu"
    return "cpu"


@contextlib.contextmanager
def _rng_kept(t, device: str):
    """Restore torch's random state afterwards: reading the probe set draws a DataLoader
    seed from it, which would otherwise shift the training loop's randomness."""
    cpu = t.get_rng_state()
    cuda = t.cuda.get_rng_state_all() if device == "cuda" else None
    try:
        yield
    finally:
        t.set_rng_state(cpu)
        if cuda is not None:
            t.cuda.set_rng_state_all(cuda)
