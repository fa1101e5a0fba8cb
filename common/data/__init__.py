"""Sample-data generators and datalist readers/writers."""

from __future__ import annotations

import importlib
from types import ModuleType

_MODULES = (
    "datalist",
    "drr",
    "json_io",
    "package_data",
    "partial_datalist",
    "radiograph_io",
    "synthetic_ct",
    "synthetic_xray",
    "tolerant",
    "writers",
    "xray_acquisition",
)

__all__ = list(_MODULES)


def __getattr__(name: str) -> ModuleType:
    if name in _MODULES:
        return importlib.import_module(f"common.data.{name}")
    raise AttributeError(f"module 'common.data' has no attribute {name!r}")
