"""Sample-data generators and datalist readers/writers."""

from common.data import datalist

__all__ = ["datalist"]
