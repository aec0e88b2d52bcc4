"""Extraction backends (stage ``"extract"`` in the registry): where the model runs.

Each implements :class:`ExtractDevice`; the extraction loop asks it for what differs between
devices (asynchronous copies, pinned memory, loader workers, freeing memory after an
out-of-memory) and never looks at the device type itself.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

from ..registry import cuda_check, declare


@runtime_checkable
class ExtractDevice(Protocol):
    """``device``: the torch device; ``async_copies``: host copies may be queued
    non-blocking and waited on with :meth:`event`; ``pin_memory``: the loader pins batches;
    ``default_workers``: DataLoader workers when not given; ``slow_fp16``: fp16 autocast
    runs slowly here (bf16 is the choice)."""

    device: object
    async_copies: bool
    pin_memory: bool
    default_workers: int
    slow_fp16: bool

    def event(self): ...

    def free_memory(self) -> None: ...


class TorchCuda:
    async_copies = True
    pin_memory = True
    slow_fp16 = False

    def __init__(self):
        import torch

        self.torch = torch
        self.device = torch.device("cuda")
        self.default_workers = min(8, os.cpu_count() or 1)

    def event(self):
        e = self.torch.cuda.Event()
        e.record()
        return e

    def free_memory(self) -> None:
        self.torch.cuda.empty_cache()


class TorchCpu:
    async_copies = False
    pin_memory = False
    default_workers = 0
    slow_fp16 = True

    def __init__(self):
        import torch

        self.device = torch.device("cpu")

    def event(self):
        return None

    def free_memory(self) -> None:
        return None


DEVICES = declare("extract", ExtractDevice, parameter="device", description="model execution")
DEVICES.register("torch-cuda", TorchCuda, requires=("torch",), check=cuda_check, gpu=True,
                 install="install a CUDA build of torch==2.13.0",
                 description="torch on a CUDA GPU (bf16/fp16 autocast, pinned memory, workers)")
DEVICES.register("torch-cpu", TorchCpu, requires=("torch",), install="pip install torch==2.13.0",
                 description="torch on the CPU")
