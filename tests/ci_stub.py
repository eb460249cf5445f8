"""Run ``.ci/run`` with stub commands in place of installers and of pytest, on a PATH holding only those stubs
and the few tools the script itself needs, so a test can see what the script would run, and in which order,
without installing anything."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def run_ci(script: Path, tmp_path: Path, stubs: dict[str, str], home: str) -> tuple[subprocess.CompletedProcess, str]:
    """Run ``script`` with each ``stubs`` name as a ``sh`` body (``$LOG`` is a file they may append to);
    returns the finished process and the log's text."""
    bin_dir, tools = tmp_path / "bin", tmp_path / "tools"
    bin_dir.mkdir()
    tools.mkdir()
    for name, body in stubs.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    for tool in ("bash", "dirname", "cat", "sh", "env"):  # nothing else: real installers must not be found
        if (found := shutil.which(tool)) and not (tools / tool).exists():
            (tools / tool).symlink_to(found)
    log = tmp_path / "log"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          env={"PATH": f"{bin_dir}:{tools}", "LOG": str(log), "HOME": home})
    return proc, log.read_text() if log.exists() else ""
