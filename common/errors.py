"""Errors raised for bad user input: each message names the file and what is wrong with it."""

from __future__ import annotations

__all__ = ["CheckpointMismatchError", "InvalidInputError"]


class InvalidInputError(ValueError):
    """An input file or datalist entry that the bundle cannot use."""


class CheckpointMismatchError(ValueError):
    """A checkpoint whose tensors do not fit the configured network."""
