"""Shared library of the annotation-efficient MONAI bundles.

Shared primitives by kind (``data``, ``transforms``, ``handlers``) and one package per method
(``smile``, ``sli2vol``, ``xnet``) with what only that method uses. Methods import primitives, never each
other. Subpackages load on first attribute access (``common.smile.SmileTargetd`` in a bundle config after
``$import common``), so light tools do not pay for importing torch and MONAI.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_SUBPACKAGES = ("data", "handlers", "transforms", "smile", "sli2vol", "xnet")

__all__ = list(_SUBPACKAGES)


def __getattr__(name: str) -> ModuleType:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"common.{name}")
    raise AttributeError(f"module 'common' has no attribute {name!r}")
