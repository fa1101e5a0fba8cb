"""Datalists, cases, folds and file I/O shared by the bundles."""

from __future__ import annotations

import importlib
from types import ModuleType

_MODULES = ("atomic", "cases", "datalist", "file_types", "folds", "json_io", "tolerant", "writers")

__all__ = list(_MODULES)


def __getattr__(name: str) -> ModuleType:
    if name in _MODULES:
        return importlib.import_module(f"common.data.{name}")
    raise AttributeError(f"module 'common.data' has no attribute {name!r}")
