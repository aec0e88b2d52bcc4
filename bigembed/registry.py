"""Backend registry: each stage declares its backend interface once and registers its backends.

A :class:`Stage` holds the interface (a :class:`typing.Protocol`) and the backends that
implement it, in preference order. ``stage.resolve("auto")`` picks the first usable one and
logs what it picked and why; an explicit name that cannot run raises
:class:`~bigembed.errors.BackendUnavailable` with the install hint. ``stage.create(...)``
returns the backend object, checked against the interface. Stage code calls the object's
methods and reads its capabilities; it never branches on a backend's name or a device token.
CLI choices and help texts come from :meth:`Stage.choices` and :meth:`Stage.help`.

The stages: ``extract`` (:mod:`bigembed.extract.backends`), ``knn``
(:mod:`bigembed.search.backends`), ``reduce`` (:mod:`bigembed.reduce.backends`) and
``raster`` (:mod:`bigembed.view.raster`). :func:`stage` imports a stage's module on first
use, so asking the registry never depends on what happened to be imported before.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from typing import Any, Callable

from .errors import BackendUnavailable, InputError

log = logging.getLogger(__name__)

#: where each stage declares its interface and registers its backends
STAGE_MODULES = {
    "extract": "bigembed.extract.backends",
    "knn": "bigembed.search.backends",
    "reduce": "bigembed.reduce.backends",
    "raster": "bigembed.view.raster",
}


def module_missing(mod: str) -> bool:
    try:
        return importlib.util.find_spec(mod) is None
    except (ImportError, ValueError):
        return True


@dataclass(frozen=True)
class Backend:
    """One registered backend: how to make it and what it needs.

    ``factory(**options)`` returns an object implementing the stage's interface.
    ``requires``: modules that must import; ``check()``: None when fine, else why not (a
    CUDA device, say); ``methods``: what it can do, each with the extra modules it needs
    (``{"pca": (), "umap": ("umap",)}``), None when the stage has no methods;
    ``auto_check()``: a further condition under ``"auto"`` only (a GPU path that also runs,
    slowly, on the CPU by name).
    """

    stage: str
    name: str
    factory: Callable[..., Any]
    requires: tuple = ()
    check: Callable[[], str | None] | None = None
    install: str = ""
    description: str = ""
    gpu: bool = False
    methods: dict | None = None
    auto_check: Callable[[], str | None] | None = None

    def does(self, method: str | None) -> bool:
        return method is None or self.methods is None or method in self.methods

    def unavailable_reason(self, method: str | None = None) -> str | None:
        needs = tuple(self.requires)
        if method is not None and self.methods is not None:
            needs += tuple(self.methods.get(method, ()))
        for mod in needs:
            if module_missing(mod):
                return f"module {mod!r} is not installed"
        if self.check is not None:
            return self.check()
        return None


class Stage:
    """The backends of one stage and the interface they implement.

    ``parameter``: the name of the stage function's parameter that picks the backend (used in
    error messages; the CLI maps it to its own flag).
    """

    def __init__(self, name: str, interface: type, *, parameter: str = "backend",
                 description: str = ""):
        self.name = name
        self.interface = interface
        self.parameter = parameter
        self.description = description
        self._backends: dict[str, Backend] = {}

    def __repr__(self) -> str:
        return f"Stage({self.name!r}, {list(self._backends)})"

    def register(self, name: str, factory: Callable[..., Any], **kw) -> Backend:
        b = Backend(stage=self.name, name=name, factory=factory, **kw)
        self._backends[name] = b
        return b

    @property
    def backends(self) -> dict[str, Backend]:
        return dict(self._backends)

    def names(self) -> list[str]:
        return list(self._backends)

    def choices(self) -> list[str]:
        return ["auto", *self._backends]

    def available(self, method: str | None = None) -> list[str]:
        return [n for n, b in self._backends.items()
                if b.does(method) and b.unavailable_reason(method) is None]

    def help(self) -> str:
        """The ``--backend`` help text: every backend with what it is, in ``auto``'s order.
        (Availability is not probed here: building a parser must stay cheap.)"""
        parts = [f"auto: the first usable of {', '.join(self._backends)}"]
        parts += [f"{b.name}: {b.description}" for b in self._backends.values()]
        return "; ".join(parts)

    def resolve(self, name: str = "auto", *, method: str | None = None) -> Backend:
        """The backend to use: the named one, or under ``"auto"`` the first usable one for
        ``method``."""
        if name == "auto":
            skipped = []
            for b in self._backends.values():
                if not b.does(method):
                    skipped.append(f"{b.name}: has no {method}")
                    continue
                why = b.unavailable_reason(method)
                if why is None and b.auto_check is not None:
                    why = b.auto_check()
                if why is None:
                    if skipped:
                        log.info("%s: using backend %r; skipped %s", self.name, b.name,
                                 "; ".join(skipped))
                    else:
                        log.info("%s: using backend %r", self.name, b.name)
                    return b
                skipped.append(f"{b.name}: {why}")
            # first the hint of a backend auto would pick without a GPU (not a GPU one, nor
            # a GPU path that runs on the CPU only by name): what a user without a GPU needs
            hints = [b.install for b in sorted(self._backends.values(),
                                               key=lambda b: (b.gpu, b.auto_check is not None))
                     if b.does(method) and b.install]
            raise BackendUnavailable(f"{self.name}: no backend is available"
                                     f"{f' for {method}' if method else ''} "
                                     f"({'; '.join(skipped)}). {hints[0] if hints else ''}"
                                     .strip())
        if name not in self._backends:
            raise InputError(f"{self.parameter} must be one of {self.choices()}, got {name!r}")
        b = self._backends[name]
        if not b.does(method):
            raise InputError(f"{self.parameter}={name!r} has no {method}; it does "
                             f"{list(b.methods)}")
        why = b.unavailable_reason(method)
        if why is not None:
            raise BackendUnavailable(
                f"{self.parameter}={name!r} cannot run{f' {method}' if method else ''}: "
                f"{why}. {b.install}".strip())
        return b

    def create(self, name: str = "auto", *, method: str | None = None, **options):
        """``(backend record, backend object)`` for ``name``; the object is checked against
        the stage's interface."""
        b = self.resolve(name, method=method)
        obj = b.factory(**options)
        if not isinstance(obj, self.interface):
            raise TypeError(f"{self.name} backend {b.name!r} does not implement "
                            f"{self.interface.__name__}")
        return b, obj


_STAGES: dict[str, Stage] = {}


def declare(name: str, interface: type, **kw) -> Stage:
    """Declare a stage (once, in its backends module)."""
    if name in _STAGES:
        raise RuntimeError(f"stage {name!r} is declared twice")
    _STAGES[name] = s = Stage(name, interface, **kw)
    return s


def stage(name: str) -> Stage:
    """The :class:`Stage` called ``name``, importing the module that declares it."""
    if name not in _STAGES and name in STAGE_MODULES:
        importlib.import_module(STAGE_MODULES[name])
    if name not in _STAGES:
        raise InputError(f"stage must be one of {sorted(STAGE_MODULES)}, got {name!r}")
    return _STAGES[name]


def backends(name: str) -> dict[str, Backend]:
    return stage(name).backends


def resolve(name: str, backend: str = "auto", *, method: str | None = None) -> Backend:
    return stage(name).resolve(backend, method=method)


def cuda_check() -> str | None:
    """None when torch sees a CUDA device, else why not (without importing torch eagerly)."""
    if module_missing("torch"):
        return "torch is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA device"
    return None
