"""JSON files written the project's way: 4-space indent, key order kept, final newline, atomic replace."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["write_json"]


def write_json(data: object, path: str | os.PathLike) -> Path:
    """Write ``data`` as JSON atomically (temporary file in the same folder, then rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=4) + "\n")
    os.replace(temporary, path)
    return path
