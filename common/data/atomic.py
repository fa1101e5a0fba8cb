"""Files that are either complete or absent: write to a hidden temporary file beside the target, then rename."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_target"]


@contextmanager
def atomic_target(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to ``path``, on error it is removed.

    The temporary file sits in the same folder (created if needed) and ends with ``path``'s own name, so writers
    that choose the format by suffix (``.nii.gz``, ``.pt``) write the same format. Its name is unique, so
    processes writing the same target never share a temporary file. A reader never sees a half-written ``path``.

    Example::

        with atomic_target("out/report.json") as temporary:
            temporary.write_text(text)
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".partial-{uuid.uuid4().hex[:8]}-{target.name}")
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
