"""JSON files written the project's way: 4-space indent, key order kept, final newline, atomic replace."""

from __future__ import annotations

import json
import os
from pathlib import Path

from common.data.atomic import atomic_target

__all__ = ["write_json"]


def write_json(data: object, path: str | os.PathLike) -> Path:
    """Write ``data`` as JSON atomically (temporary file in the same folder, then rename); returns the path."""
    with atomic_target(path) as temporary:
        temporary.write_text(json.dumps(data, indent=4) + "\n")
    return Path(path)
