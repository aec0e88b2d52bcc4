"""Turn ``--model`` / ``--data`` arguments into an ``nn.Module`` and a batch source.

A model is an ``nn.Module``, a ``"package.module:factory"`` string (a callable returning a
module), a built-in name (``digits``, ``vit_b16``) or a TorchScript / ``torch.export`` file.
Data is a map-style ``torch.utils.data.Dataset`` (or a tensor / array of instances), or an
iterable of batches; items and batches are ``x``, ``(x, label)`` or a dict.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import numpy as np

from ..errors import BackendUnavailable, InputError

log = logging.getLogger(__name__)

INSTALL_TORCH = "pip install torch==2.13.0"
#: built-in models: name -> (factory "module:function", default data factory or None)
BUILTIN_MODELS = {
    "digits": "bigembed.models.digits:load_model",
    "vit_b16": "bigembed.models.vit:build_vit_b16",
}
BUILTIN_DATA = {
    "digits": "bigembed.models.digits:DigitsData",
    "random_images": "bigembed.models.vit:RandomImages",
}
INPUT_KEYS = ("input", "inputs", "x", "pixel_values", "image", "images")
LABEL_KEYS = ("label", "labels", "y", "target", "targets")


def torch():
    """torch, imported on first use; a clear error when it is not installed."""
    try:
        import torch as _t
    except ImportError as e:
        raise BackendUnavailable(f"extract needs torch ({e}); install it with: "
                                 f"{INSTALL_TORCH}") from None
    return _t


def import_object(spec: str, what: str):
    """Import ``"package.module:attr"`` (attr may be dotted) and return the attribute."""
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise InputError(f"{what} must be 'package.module:factory' (or a built-in name / a "
                         f"file), got {spec!r}")
    mod_name, attr = spec.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except Exception as e:  # any import-time failure is the user's module, not ours
        raise InputError(f"{what} {spec!r}: cannot import module {mod_name!r} "
                         f"({type(e).__name__}: {e})") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(mod) if not n.startswith("_")]
            import difflib

            close = difflib.get_close_matches(part, names, n=3)
            hint = f"; did you mean {close}?" if close else f"; it has {names[:20]}"
            raise InputError(f"{what} {spec!r}: module {mod_name!r} has no attribute "
                             f"{attr!r}{hint}")
        obj = getattr(obj, part)
    return obj


def _call_factory(fn, spec, what, **kw):
    try:
        return fn(**kw)
    except Exception as e:
        raise InputError(f"{what} {spec!r}: the factory raised {type(e).__name__}: {e}") from None


def load_model(model, *, seed: int = 0):
    """Return ``(module, description)`` for a model argument (see the module docstring)."""
    t = torch()
    nn = t.nn
    if isinstance(model, nn.Module):
        return model, f"{type(model).__module__}.{type(model).__qualname__}"
    if not isinstance(model, (str, Path)):
        raise InputError(f"model must be an nn.Module, 'package.module:factory', a built-in "
                         f"name {sorted(BUILTIN_MODELS) + ['minilm']}, 'text:DIR' or a model "
                         f"file, got "
                         f"{type(model).__name__}")
    spec = str(model)
    if spec == "minilm" or spec.startswith("text:"):
        from .text import load_text_model, minilm_path

        path = minilm_path() if spec == "minilm" else Path(spec[5:])
        return load_text_model(path), spec
    if spec in BUILTIN_MODELS:
        fn = import_object(BUILTIN_MODELS[spec], "model")
        obj = fn(seed=seed) if spec == "digits" else fn()
        return obj, spec
    path = Path(spec)
    if ":" not in spec or path.exists():
        if not path.exists():
            raise InputError(f"model {spec!r}: no such file, and not 'package.module:factory' "
                             f"nor a built-in name {sorted(BUILTIN_MODELS)}")
        return _load_file(path), str(path.resolve())
    fn = import_object(spec, "model")
    obj = _call_factory(fn, spec, "model") if callable(fn) and not isinstance(
        fn, nn.Module) else fn
    if not isinstance(obj, nn.Module):
        raise InputError(f"model {spec!r}: the factory returned {type(obj).__name__}, "
                         f"expected a torch.nn.Module")
    return obj, spec


def _load_file(path: Path):
    t = torch()
    if path.is_dir() or path.stat().st_size == 0:
        raise InputError(f"model {path}: expected a TorchScript or torch.export file")
    errors = []
    if path.suffix == ".pt2":
        order = ("export", "jit")
    else:
        order = ("jit", "export")
    for kind in order:
        try:
            if kind == "jit":
                return t.jit.load(str(path), map_location="cpu")
            ep = t.export.load(str(path))
            # unflatten restores the module hierarchy, so layer names and hooks work.
            return t.export.unflatten(ep)
        except Exception as e:
            errors.append(f"{kind}: {type(e).__name__}: {str(e)[:200]}")
    raise InputError(f"model {path}: not a readable TorchScript or torch.export file "
                     f"({'; '.join(errors)})")


class Source:
    """Data ready for extraction.

    ``rows``: instance count when known (map-style data), else None. ``map_style``: whether
    rows can be fetched by index (then batches restart at any row without computing).
    """

    def __init__(self, data, description: str):
        self.data = data
        self.description = description
        t = torch()
        self.map_style = (isinstance(data, t.utils.data.Dataset)
                          and not isinstance(data, t.utils.data.IterableDataset)) or (
            hasattr(data, "__getitems__") and hasattr(data, "__len__"))
        self.rows = None
        if self.map_style:
            self.rows = len(data)
        elif hasattr(data, "num_rows"):
            self.rows = int(data.num_rows)
        self.fingerprint = getattr(data, "fingerprint", None) or (
            f"{description}:rows={self.rows}")
        #: optional hooks of the data: ``collate(items) -> batch`` (e.g. a tokenizer),
        #: ``lengths() -> (N,)`` sizes to batch similar instances together, and ``workers``
        #: (loader workers it wants; 0 where the batch is made in-process anyway)
        self.collate = getattr(data, "collate", None)
        self.lengths = getattr(data, "lengths", None)
        self.workers = getattr(data, "workers", None)

    def loader(self, **kw):
        """A DataLoader over map-style data, with the data's own collate when it has one."""
        t = torch()
        if self.collate is not None:
            kw.setdefault("collate_fn", self.collate)
        return t.utils.data.DataLoader(self.data, **kw)

    def metadata(self, start: int, stop: int) -> dict:
        fn = getattr(self.data, "metadata", None)
        if fn is None:
            return {}
        return dict(fn(start, stop))


def load_data(data, *, n: int | None = None, seed: int = 0) -> Source:
    """Return a :class:`Source` for a data argument."""
    t = torch()
    if isinstance(data, (str, Path)):
        spec = str(data)
        if spec in BUILTIN_DATA:
            if n is None:
                raise InputError(f"data {spec}: pass --n, the number of instances to make")
            fn = import_object(BUILTIN_DATA[spec], "data")
            return Source(_call_factory(fn, spec, "data", n=n, seed=seed), spec)
        fn = import_object(spec, "data")
        obj = fn
        if callable(fn) and not isinstance(fn, t.utils.data.Dataset) and not hasattr(
                fn, "__getitems__"):
            obj = _call_factory(fn, spec, "data")
        if obj is None:
            raise InputError(f"data {spec!r}: the factory returned None, expected a Dataset "
                             f"or an iterable of batches")
        src = Source(_wrap_arrays(obj), spec)
        if src.fingerprint == f"{spec}:rows={src.rows}":
            src.fingerprint = spec + (f":rows={src.rows}" if src.rows is not None else "")
        return src
    if data is None:
        raise InputError("data is required (a Dataset, an iterable of batches, or "
                         "'package.module:factory')")
    data = _wrap_arrays(data)
    return Source(data, f"{type(data).__module__}.{type(data).__qualname__}")


def _wrap_arrays(obj):
    t = torch()
    if isinstance(obj, np.ndarray):
        obj = t.from_numpy(obj)
    if isinstance(obj, t.Tensor):
        if obj.ndim < 1 or len(obj) == 0:
            raise InputError(f"data: a tensor of instances needs shape (N, ...) with N >= 1, "
                             f"got {tuple(obj.shape)}")
        return t.utils.data.TensorDataset(obj)
    if not (hasattr(obj, "__iter__") or hasattr(obj, "__getitem__")):
        raise InputError(f"data: expected a Dataset or an iterable of batches, got "
                         f"{type(obj).__name__}")
    return obj


def split_batch(batch, where: str):
    """Return ``(inputs, labels or None)`` from a collated batch.

    inputs: a tensor (passed positionally) or a dict (passed as keyword arguments).
    """
    t = torch()
    if isinstance(batch, t.Tensor):
        return batch, None
    if isinstance(batch, np.ndarray):
        return t.from_numpy(batch), None
    if isinstance(batch, (tuple, list)):
        if len(batch) == 1:
            return split_batch(batch[0], where)
        if len(batch) >= 2:
            x, y = batch[0], batch[1]
            if isinstance(x, np.ndarray):
                x = t.from_numpy(x)
            if y is not None and not isinstance(y, t.Tensor):
                y = t.as_tensor(np.asarray(y))
            return x, y
    if isinstance(batch, dict):
        y = next((batch[k] for k in LABEL_KEYS if k in batch), None)
        if y is not None and not isinstance(y, t.Tensor):
            y = t.as_tensor(np.asarray(y))
        for k in INPUT_KEYS:
            if k in batch:
                return batch[k], y
        rest = {k: v for k, v in batch.items() if k not in LABEL_KEYS}
        if rest:
            return rest, y
    raise InputError(f"{where}: cannot find the model input in a batch of type "
                     f"{type(batch).__name__}; expected a tensor, (inputs, labels) or a dict "
                     f"with one of {list(INPUT_KEYS)}")


def batch_rows(x) -> int:
    t = torch()
    if isinstance(x, t.Tensor):
        return int(x.shape[0]) if x.ndim else 1
    if isinstance(x, dict):
        for v in x.values():
            if isinstance(v, t.Tensor) and v.ndim:
                return int(v.shape[0])
    raise InputError(f"cannot tell the batch size of inputs of type {type(x).__name__}")


def slice_inputs(x, a: int, b: int):
    if isinstance(x, dict):
        return {k: (v[a:b] if hasattr(v, "shape") and getattr(v, "ndim", 0) else v)
                for k, v in x.items()}
    return x[a:b]


def to_device(x, device, non_blocking: bool):
    if isinstance(x, dict):
        return {k: to_device(v, device, non_blocking) for k, v in x.items()}
    if hasattr(x, "to"):
        return x.to(device, non_blocking=non_blocking)
    return x
