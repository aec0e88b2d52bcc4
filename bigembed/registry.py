"""Backend registry: one mapping from name to factory per stage, chosen once by name.

``resolve(stage, "auto")`` picks the first available backend in preference order and logs what
it picked and why; an explicit name that cannot run raises :class:`BackendUnavailable` with
the install hint. Stage code asks the registry and never branches on the device itself.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Callable

from .errors import BackendUnavailable, InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backend:
    stage: str
    name: str
    factory: Callable
    #: modules that must import for the backend to be usable
    requires: tuple = ()
    #: extra check (e.g. a CUDA device present); returns None when fine, else the reason
    check: Callable[[], str | None] | None = None
    install: str = ""
    description: str = ""
    gpu: bool = False
    extra: dict = field(default_factory=dict)

    def unavailable_reason(self) -> str | None:
        for mod in self.requires:
            try:
                found = importlib.util.find_spec(mod) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                return f"module {mod!r} is not installed"
        if self.check is not None:
            return self.check()
        return None


_REGISTRY: dict[str, dict[str, Backend]] = {}


def register(backend: Backend) -> Backend:
    _REGISTRY.setdefault(backend.stage, {})[backend.name] = backend
    return backend


def backends(stage: str) -> dict[str, Backend]:
    return dict(_REGISTRY.get(stage, {}))


def available(stage: str) -> list[str]:
    return [n for n, b in _REGISTRY.get(stage, {}).items() if b.unavailable_reason() is None]


def resolve(stage: str, name: str = "auto", *, method: str | None = None) -> Backend:
    """The backend to use for ``stage``: the named one, or under ``"auto"`` the first usable.

    ``method``: what the backend must do (checked against ``extra["methods"]`` where a
    backend lists them). Under ``"auto"`` a backend's ``extra["auto_check"]()`` (None or why
    not) must also pass: a backend usable by name may be one auto passes over (e.g. a GPU
    path that also runs, slowly, on the CPU).
    """
    table = _REGISTRY.get(stage)
    if not table:
        raise InputError(f"no backends are registered for stage {stage!r}")
    if name == "auto":
        skipped = []
        for b in table.values():
            does = b.extra.get("methods")
            if method is not None and does is not None and method not in does:
                skipped.append(f"{b.name}: has no {method}")
                continue
            why = b.unavailable_reason()
            if why is None and b.extra.get("auto_check") is not None:
                why = b.extra["auto_check"]()
            if why is None:
                if skipped:
                    log.info("%s: using backend %r (%s unavailable)", stage, b.name,
                             "; ".join(skipped))
                else:
                    log.info("%s: using backend %r", stage, b.name)
                return b
            skipped.append(f"{b.name}: {why}")
        raise BackendUnavailable(f"{stage}: no backend is available ({'; '.join(skipped)})")
    if name not in table:
        raise InputError(f"--backend for {stage} must be one of {['auto', *table]}, got {name!r}")
    b = table[name]
    does = b.extra.get("methods")
    if method is not None and does is not None and method not in does:
        raise InputError(f"{stage} backend {name!r} has no {method}; it does {list(does)}")
    why = b.unavailable_reason()
    if why is not None:
        raise BackendUnavailable(
            f"{stage} backend {name!r} cannot run: {why}. {b.install}".strip()
        )
    return b


def cuda_check() -> str | None:
    """None when torch sees a CUDA device, else why not (without importing torch eagerly)."""
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    return None
