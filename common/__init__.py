"""Shared library of the annotation-efficient MONAI bundles: data, transforms, losses, networks, engines.

Subpackages load on first attribute access (``common.transforms.SmileTargetd`` in a bundle config after
``$import common``), so light tools such as the data generator do not pay for importing torch and MONAI.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_SUBPACKAGES = ("data", "engines", "handlers", "losses", "metrics", "networks", "propagation", "transforms")

__all__ = list(_SUBPACKAGES)


def __getattr__(name: str) -> ModuleType:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"common.{name}")
    raise AttributeError(f"module 'common' has no attribute {name!r}")
