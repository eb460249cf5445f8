"""`.ci/run` fails when a test it is meant to run cannot run (issue 20): it requires the browser test."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


CI = Path(__file__).resolve().parent.parent / ".ci" / "run"


def test_ci_script_parses_and_requires_the_browser_test():
    assert subprocess.run(["bash", "-n", str(CI)]).returncode == 0
    text = CI.read_text()
    assert "set -euo pipefail" in text
    assert "export SVLM_REQUIRE_BROWSER=1" in text
    assert text.index("export SVLM_REQUIRE_BROWSER=1") < text.index("python3 -m pytest")
    assert "warning" not in text  # no failure is downgraded to a warning


def test_ci_script_stops_when_chromium_cannot_be_installed(tmp_path):
    """Run the script's install block with no chromedriver and an apt-get that fails: it must exit non-zero
    before any test runs (pip and pytest are stubbed; nothing is installed)."""
    from ci_stub import run_ci

    proc, log = run_ci(CI, tmp_path, {"apt-get": "exit 100", "sudo": 'exec "$@"', "id": "echo 0",
                                      "python3": "echo RAN python3 \"$@\" >> \"$LOG\"; exit 0"},
                       home=os.environ.get("HOME", "/"))
    assert proc.returncode != 0
    assert "chromium could not be installed" in proc.stderr
    assert "pytest" not in log
