"""Atomic writes (a reader, or a rerun after a kill, sees the old file or the new one, never half of one) and
folder locks (one writer per run or CoT build)."""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from factory.errors import SVLMError


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


def write_report(out: str | Path, stem: str, report, markdown: str) -> None:
    """A benchmark's ``<stem>.json`` and ``<stem>.md`` in ``out`` (made if missing), each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{stem}.json", report)
    write_text(out / f"{stem}.md", markdown)


_held: set[str] = set()  # folders this process holds the lock of


class Busy(SVLMError):
    """Another process holds the folder's lock (the caller turns it into its own one-line error)."""


@contextmanager
def folder_lock(folder: str | Path):
    """Hold an exclusive ``fcntl.flock`` on ``folder/.svlm.lock`` for the block, so two processes never write
    one run or one CoT build at once; raises ``Busy`` at once when another process holds it. Re-entrant in a
    process (``svlm run`` trains inside its own lock); in a multi-process launch only rank 0 locks, as the
    ranks of one job share their folder. The lock dies with its process: a kill leaves nothing to clean."""
    import fcntl

    folder = Path(folder)
    key = str(folder.resolve())
    if os.environ.get("RANK", "0") != "0" or key in _held:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    fh = open(folder / ".svlm.lock", "a")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise Busy(f"{folder} is in use by another svlm process; wait for it to finish or choose another "
                   "folder") from None
    _held.add(key)
    try:
        yield
    finally:
        _held.discard(key)
        fh.close()  # releases the lock
