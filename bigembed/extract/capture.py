"""Capture named layers' outputs with forward hooks and pool them to one vector per instance.

Pooling of a layer output of shape (B, ...):

* (B, d): taken as is, whatever the pooling;
* (B, C, H, W...) from a convolution-like layer (4-D and up, or 3-D from a 1-D conv/pool/norm):
  ``mean``/``max`` over the spatial axes -> (B, C); ``flatten`` -> (B, C*H*W); ``cls`` refuses;
* (B, T, D) token sequences: ``mean``/``max`` over tokens -> (B, D); ``cls`` -> token 0;
  ``flatten`` -> (B, T*D). When the batch carries an attention mask of shape (B, T) (text
  models), the pooling sees only the real tokens: ``mean`` over them, ``max`` ignoring padding,
  ``cls`` the first real one. So a vector does not depend on which batch (and how much
  padding) it came with.
"""

from __future__ import annotations

import difflib

import numpy as np

from ..errors import InputError
from .sources import torch

POOLINGS = ("mean", "max", "cls", "flatten")


def resolve_layers(model, layers) -> dict:
    """``{name: module}`` for the requested layer names; unknown names list close matches."""
    if isinstance(layers, str):
        layers = [x.strip() for x in layers.split(",") if x.strip()]
    layers = list(layers or [])
    if not layers:
        raise InputError("layers: name at least one layer (see --list-layers)")
    if len(set(layers)) != len(layers):
        dup = sorted({x for x in layers if layers.count(x) > 1})
        raise InputError(f"layers: {dup} named more than once")
    modules = dict(model.named_modules())
    modules.pop("", None)
    out = {}
    for name in layers:
        if not isinstance(name, str) or name not in modules:
            close = difflib.get_close_matches(str(name), list(modules), n=5, cutoff=0.5)
            hint = f"; close matches: {close}" if close else ""
            raise InputError(f"layers: the model has no layer {name!r}{hint} "
                             f"(--list-layers prints all {len(modules)} names)")
        out[name] = modules[name]
    return out


def _first_tensor(out):
    t = torch()
    if isinstance(out, t.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], t.Tensor):
        return out[0]  # e.g. MultiheadAttention / LSTM: (output, extras)
    for attr in ("last_hidden_state", "logits"):
        v = getattr(out, attr, None)
        if isinstance(v, t.Tensor):
            return v
    if isinstance(out, dict):
        for v in out.values():
            if isinstance(v, t.Tensor):
                return v
    return None


def _channels_first(module) -> bool:
    nn = torch().nn
    return isinstance(module, (nn.Conv1d, nn.ConvTranspose1d, nn.MaxPool1d, nn.AvgPool1d,
                               nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.BatchNorm1d))


def pool(t_out, how: str, *, layer: str, module=None, mask=None):
    """Pool one layer output (B, ...) to (B, d) float32 on its device.

    ``mask``: the batch's attention mask of shape (B, T) (1 = real token) or None; used for
    (B, T, D) token outputs whose first two axes match it.
    """
    shape = tuple(t_out.shape)
    if t_out.ndim == 1:
        if how == "flatten":
            return t_out.reshape(-1, 1).float()
        raise InputError(f"layer {layer!r} gives shape {shape} (one number per instance); "
                         f"use --pooling flatten to store it as a 1-d vector")
    if t_out.ndim == 2:
        return t_out.float()
    if how == "flatten":
        return t_out.reshape(shape[0], -1).float()
    spatial = t_out.ndim >= 4 or (
        t_out.ndim == 3 and module is not None and _channels_first(module))
    if spatial:
        if how == "cls":
            raise InputError(f"pooling cls takes the first token of a (batch, tokens, dim) "
                             f"output, but layer {layer!r} gives a feature map of shape "
                             f"{shape}; use mean, max or flatten")
        x = t_out.float().flatten(2)
        return x.mean(2) if how == "mean" else x.amax(2)
    x = t_out.float()
    if masks_tokens(t_out, mask, module):
        return _masked_pool(x, mask, how)
    if how == "cls":
        return x[:, 0]
    return x.mean(1) if how == "mean" else x.amax(1)


def masks_tokens(t_out, mask, module=None) -> bool:
    """Whether ``mask`` (B, T) applies to the (B, T, D) token output ``t_out``."""
    return (mask is not None and t_out.ndim == 3 and tuple(mask.shape) == tuple(t_out.shape[:2])
            and not (module is not None and _channels_first(module)))


def _masked_pool(x, mask, how: str):
    """Pool (B, T, D) over the real tokens only (``mask`` (B, T), nonzero = real)."""
    t = torch()
    real = mask.to(device=x.device) != 0
    if how == "cls":
        # The first real token: position 0 with right padding, later with left padding.
        first = real.to(t.int8).argmax(1)
        return x[t.arange(x.shape[0], device=x.device), first]
    if how == "mean":
        m = real.unsqueeze(-1).to(x.dtype)
        return (x * m).sum(1) / m.sum(1).clamp_min(1.0)
    out = x.masked_fill(~real.unsqueeze(-1), float("-inf")).amax(1)
    # An instance without a single real token has nothing to pool: zeros, not -inf.
    return t.where(real.any(1, keepdim=True), out, t.zeros_like(out))


def describe_pooling(how: str, shape: tuple, masked: bool, module=None) -> dict:
    """What the manifest says about how a layer of output ``shape`` (B, ...) became vectors."""
    if len(shape) == 2:
        return {"method": "none", "note": "the layer gives one vector per instance"}
    if how == "flatten":
        return {"method": "flatten"}
    spatial = len(shape) >= 4 or (len(shape) == 3 and module is not None
                                  and _channels_first(module))
    if spatial:
        return {"method": how, "over": "spatial axes"}
    d = {"method": how, "over": "tokens", "masked": bool(masked)}
    if masked:
        d["note"] = {"mean": "mean over the real tokens (attention mask); padding ignored",
                     "max": "max over the real tokens (attention mask); padding ignored",
                     "cls": "the first real token (attention mask)"}[how]
    return d


class Capture:
    """Forward hooks that store each named layer's pooled output for the current batch."""

    def __init__(self, layers: dict, pooling: str):
        self.layers = layers
        self.pooling = pooling
        self.out: dict = {}
        self.shapes: dict = {}
        self.masked: dict = {}  # layer -> whether its pooling used the attention mask
        #: the current batch's attention mask (B, T), set by the runner before each forward
        self.mask = None
        self.handles = []

    def __enter__(self):
        for name, mod in self.layers.items():
            try:
                self.handles.append(mod.register_forward_hook(self._hook(name, mod)))
            except RuntimeError as e:  # TorchScript: "not supported on ScriptModules"
                self.__exit__()
                raise InputError(
                    f"layers {name!r}: cannot hook this layer ({e}); TorchScript models run "
                    f"compiled code without per-layer hooks. Save the model with "
                    f"torch.export.save(torch.export.export(model, ...)) and pass the .pt2 "
                    f"file instead") from None
        return self

    def _hook(self, name, mod):
        def hook(_m, _inp, output):
            t = _first_tensor(output)
            if t is None:
                raise InputError(f"layer {name!r} returns {type(output).__name__}, not a tensor; "
                                 f"choose another layer")
            if name in self.out:
                raise InputError(f"layer {name!r} runs more than once in one forward pass (a "
                                 f"shared module), so which output to keep is ambiguous; "
                                 f"choose a layer that runs once")
            self.shapes[name] = tuple(t.shape)
            self.masked[name] = masks_tokens(t, self.mask, mod)
            self.out[name] = pool(t.detach(), self.pooling, layer=name, module=mod,
                                  mask=self.mask)
        return hook

    def take(self) -> dict:
        out, self.out = self.out, {}
        return out

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []


def logits_of(output):
    """A model output's (B, C) float logits (C >= 2), or None when it has none."""
    logits = _first_tensor(output)
    if logits is None or logits.ndim != 2 or logits.shape[1] < 2 or not logits.is_floating_point():
        return None
    return logits.float()


def scores(logits, labels=None):
    """Per-instance (prediction, confidence, loss) from logits of shape (n, C), on the host.

    Done per chunk in numpy rather than per batch on the device: a few vector operations on
    n x C numbers, instead of several small kernels per batch. ``loss`` (cross-entropy) is
    None without integer labels; NaN where a label is outside [0, C).
    """
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    pred = z.argmax(axis=1).astype(np.int64)
    conf = np.exp(-lse).astype(np.float32)  # softmax at the argmax, where z == 0
    loss = None
    if labels is not None and np.asarray(labels).dtype.kind in "iu":
        lab = np.asarray(labels).astype(np.int64)
        ok = (lab >= 0) & (lab < z.shape[1])
        picked = z[np.arange(len(z)), np.where(ok, lab, 0)]
        loss = np.where(ok, lse - picked, np.nan).astype(np.float32)
    return pred, conf, loss


def list_layers(model, example) -> list[dict]:
    """Every named module with its type and output shape for ``example`` (one forward pass)."""
    t = torch()
    shapes: dict = {}
    handles = []
    mods = [(n, m) for n, m in model.named_modules() if n]
    for name, mod in mods:
        def hook(_m, _i, out, name=name):
            x = _first_tensor(out)
            shapes[name] = tuple(x.shape) if x is not None else type(out).__name__
        try:
            handles.append(mod.register_forward_hook(hook))
        except RuntimeError:  # TorchScript modules take no hooks: names and types only
            break
    try:
        with t.inference_mode():
            example()
    finally:
        for h in handles:
            h.remove()
    return [{"name": n, "type": type(m).__name__, "output_shape": shapes.get(n)}
            for n, m in mods]
