"""Errors a query can meet; each names what is wrong (file, row, reason)."""

from __future__ import annotations


class ServingInputError(ValueError):
    """A query is malformed: unreadable image, empty text, bad ``k``, missing column."""


class StaleIndexError(ValueError):
    """A gallery index was built by another model version or backbone than the query model."""
