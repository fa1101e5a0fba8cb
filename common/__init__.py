"""Shared library of the annotation-efficient MONAI bundles: data, transforms, losses, networks, engines."""

from common import data, handlers, losses, metrics, transforms

__all__ = ["data", "handlers", "losses", "metrics", "transforms"]
