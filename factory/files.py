"""Atomic writes: a reader (or a rerun after a kill) sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` (unique to this process), flush it to disk, then
    rename it over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when the write or the rename failed (disk full, permission)


def write_json(path: str | Path, obj, indent: int | None = 2) -> None:
    """``obj`` as JSON, atomically (``write_text``); serialized first, so an unserializable object leaves the
    old file untouched."""
    write_text(path, json.dumps(obj, indent=indent))
