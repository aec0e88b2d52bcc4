"""Imports every cluster version of a stage, so each registers its hook (see ``session``)."""

from . import extract, graph, ingest, place  # noqa: F401
