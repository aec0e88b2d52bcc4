"""``bigembed bench``: how far each stage scales on this machine, beside the plain libraries.

:func:`run_bench` runs the stage registry (:data:`STAGES`) at each size on synthetic data,
with peers (:data:`PEERS`) under ``compare``, through the shared harness
:mod:`bigembed.bench.harness`; :mod:`bigembed.bench.report` turns the JSON into a table and HTML.
"""

from __future__ import annotations

from .context import BenchContext, StageSkipped, Trial
from .peers import PEERS
from .runner import (
                     DEFAULT_SIZES,
                     BenchResult,
                     parse_duration,
                     parse_sizes,
                     predict_seconds,
                     run_bench,
)
from .stages import STAGES

__all__ = ["run_bench", "BenchResult", "BenchContext", "Trial", "StageSkipped", "STAGES",
           "PEERS", "DEFAULT_SIZES", "parse_sizes", "parse_duration", "predict_seconds"]
