"""The fault matrix (issue 15): each case names a fault and asserts its documented outcome — the message,
the exit code, and that nothing already written is lost or duplicated. The README's fault table lists them.
Teacher-side faults (redirects, dripping servers, oversized replies, leaked keys) are in test_cot.py."""

from __future__ import annotations

import errno
import json

import pytest

from factory.cli import main
from factory.files import write_json


# --- the CLI: expected errors are one line and exit 2; a bug still shows its traceback --------------------
@pytest.mark.parametrize("exc,message", [
    (OSError(errno.ENOSPC, "No space left on device", "runs/x/accuracy.json"), "No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied", "runs/x"), "Permission denied"),
    (json.JSONDecodeError("Expecting value", "{", 1), "malformed JSON"),
])
def test_expected_errors_are_one_line_and_exit_2(exc, message, monkeypatch, capsys):
    import factory.cli as cli

    def fail(args):
        raise exc

    monkeypatch.setattr(cli, "cmd_model_list", fail)
    assert main(["model", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("svlm: error:") and message in err and err.count("\n") == 1


def test_a_bug_is_not_hidden_as_an_expected_error(monkeypatch):
    import factory.cli as cli

    monkeypatch.setattr(cli, "cmd_model_list", lambda args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        main(["model", "list"])


# --- atomic JSON outputs ------------------------------------------------------------------------------------
def test_a_failed_write_keeps_the_old_file_whole_and_leaves_no_temporary(tmp_path, monkeypatch):
    import factory.files as files

    path = tmp_path / "accuracy.json"
    write_json(path, {"accuracy": 0.5})

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "replace", disk_full)
    with pytest.raises(OSError):
        write_json(path, {"accuracy": 0.9})
    assert json.loads(path.read_text()) == {"accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["accuracy.json"]


def test_an_unserializable_report_leaves_the_old_file(tmp_path):
    path = tmp_path / "latency.json"
    write_json(path, {"runs": 8})
    with pytest.raises(TypeError):
        write_json(path, {"runs": object()})
    assert json.loads(path.read_text()) == {"runs": 8}


def test_data_check_on_a_full_disk_says_so_in_one_line_and_keeps_the_last_report(tmp_path, monkeypatch, capsys):
    import factory.files as files

    data, reports = tmp_path / "d", tmp_path / "reports"
    assert main(["data", "synth", "--out", str(data), "--n", "16", "--image-size", "32", "-q"]) == 0
    assert main(["data", "check", "--data", str(data), "--split", "train", "-q", "--report", str(reports)]) == 0
    before = (reports / "train.json").read_text()
    monkeypatch.setattr(files.os, "replace", lambda src, dst: (_ for _ in ()).throw(
        OSError(errno.ENOSPC, "No space left on device", str(dst))))
    capsys.readouterr()
    assert main(["data", "check", "--data", str(data), "--split", "train", "-q", "--report", str(reports)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("svlm: error:") and "No space left on device" in err and "Traceback" not in err
    assert (reports / "train.json").read_text() == before
