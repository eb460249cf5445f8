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


# --- bad data ---------------------------------------------------------------------------------------------
def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels in a few dozen bytes (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def small_data(tmp_path):
    data = tmp_path / "d"
    assert main(["data", "synth", "--out", str(data), "--n", "16", "--image-size", "32", "-q"]) == 0
    return data, json.loads((data / "train.json").read_text())


@pytest.mark.parametrize("fault,kind", [
    ("bomb_30000", "oversized_image"),  # Pillow itself refuses it, with an error that is not an OSError
    ("bomb_100mp", "oversized_image"),  # under Pillow's limit: it would have been decoded
    ("truncated_jpeg", "unreadable_image"),
    ("deep_annotation", "bad_annotation"),  # RecursionError in json
    ("huge_annotation", "bad_annotation"),
])
def test_bad_files_are_reported_in_lenient_mode_and_one_line_in_strict(small_data, fault, kind, capsys):
    data, entries = small_data
    _, _, image, annotation = entries[0]
    if fault.startswith("bomb"):
        (data / image).write_bytes(_png_header(30000, 30000) if fault == "bomb_30000" else _png_header(10000, 10000))
    elif fault == "truncated_jpeg":
        (data / image).write_bytes((data / image).read_bytes()[:200])
    elif fault == "deep_annotation":
        (data / annotation).write_text("[" * 100_000 + "]" * 100_000)
    else:
        (data / annotation).write_text(json.dumps({"scene": "x" * 2_000_000}))
    capsys.readouterr()
    assert main(["data", "check", "--data", str(data), "--split", "train", "--lenient", "-q"]) == 0
    assert f"skipped 1 {{'{kind}': 1}}" in capsys.readouterr().out
    assert main(["data", "check", "--data", str(data), "--split", "train", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("svlm: error:") and kind in err and err.count("\n") == 1


def test_training_rows_skip_and_count_images_that_do_not_decode_or_leave_the_root(small_data, tmp_path, capsys):
    from types import SimpleNamespace

    from factory.train.common import _usable_rows

    data, entries = small_data
    images = [str(data / e[2]) for e in entries[:4]]
    (data / entries[0][2]).write_bytes((data / entries[0][2]).read_bytes()[:200])  # truncated
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes((data / entries[1][2]).read_bytes())
    rows = [{"image": p} for p in [*images, str(outside), str(data / ".." / "d" / entries[2][2])]]
    kept = _usable_rows(SimpleNamespace(name="1_sft", data_root=data), rows)
    assert [r["image"] for r in kept] == [*images[1:], rows[-1]["image"]]  # a path through ".." that stays inside
    out = capsys.readouterr().out
    assert "skipped 2 of 6" in out and "outside_data_root: 1" in out and "unreadable_image: 1" in out
