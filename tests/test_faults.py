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

    from factory.train.common import usable_rows

    data, entries = small_data
    images = [str(data / e[2]) for e in entries[:4]]
    (data / entries[0][2]).write_bytes((data / entries[0][2]).read_bytes()[:200])  # truncated
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes((data / entries[1][2]).read_bytes())
    rows = [{"image": p} for p in [*images, str(outside), str(data / ".." / "d" / entries[2][2])]]
    kept = usable_rows(SimpleNamespace(name="1_sft", data_root=data), rows)
    assert [r["image"] for r in kept] == [*images[1:], rows[-1]["image"]]  # a path through ".." that stays inside
    out = capsys.readouterr().out
    assert "skipped 2 of 6" in out and "outside_data_root: 1" in out and "unreadable_image: 1" in out


# --- export: it replaces and removes only what it wrote ---------------------------------------------------
@pytest.fixture
def fake_run(tmp_path):
    """A run folder with a finished stage (adapter config, a checkpoint) and data: what an export reads."""
    run = tmp_path / "runs" / "x"
    (run / "1_sft" / "adapter").mkdir(parents=True)
    (run / "1_sft" / "adapter" / "adapter_config.json").write_text("{}")
    (run / "1_sft" / "checkpoint-8").mkdir()
    (run / "1_sft" / "checkpoint-8" / "state.pt").write_text("weights")
    (run / "1_sft" / "done.json").write_text("{}")
    (run / "data").mkdir()
    (run / "data" / "train.json").write_text("[]")
    return run


def _export_refused(run_or_model: dict, out, overwrite=True, match=""):
    from export.build import ExportConfig, ExportError, export

    with pytest.raises(ExportError, match=match):
        export(ExportConfig(**run_or_model, out=str(out), overwrite=overwrite))


def _tree(folder):
    return sorted((str(p.relative_to(folder)), p.read_bytes().decode("utf-8", "replace") if p.is_file() else None)
                  for p in folder.rglob("*"))


@pytest.mark.parametrize("where,match", [
    ("run", "would replace the run folder"),
    ("runs", "would replace the run folder"),  # a folder holding the run
    ("stage", "would replace the stage folder"),
    ("inside_stage", "lies inside the stage folder"),
    ("data", "not written by svlm export"),  # inside the run, but not an export's
])
def test_export_refuses_an_out_that_would_destroy_what_it_reads(fake_run, monkeypatch, where, match):
    import export.build as build

    monkeypatch.setattr(build, "resolve_source", lambda cfg: ("some/hub-id", fake_run / "1_sft" / "adapter", {}))
    before = _tree(fake_run.parent)
    out = {"run": fake_run, "runs": fake_run.parent, "stage": fake_run / "1_sft",
           "inside_stage": fake_run / "1_sft" / "export", "data": fake_run / "data"}[where]
    _export_refused({"run": str(fake_run)}, out, match=match)
    assert _tree(fake_run.parent) == before


def test_export_refuses_an_out_inside_or_equal_to_the_model_folder(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    for out in (model, model / "export", tmp_path):
        _export_refused({"model": str(model)}, out, match="model folder")
    assert _tree(model) == [("config.json", "{}")]


def test_export_keeps_a_user_folder_in_the_way_of_its_temporary_one(tmp_path):
    (tmp_path / "export.tmp").mkdir()
    (tmp_path / "export.tmp" / "notes.txt").write_text("mine")
    (tmp_path / "model").mkdir()
    _export_refused({"model": str(tmp_path / "model")}, tmp_path / "export", match="export.tmp is in the way")
    assert (tmp_path / "export.tmp" / "notes.txt").read_text() == "mine"


def test_an_export_killed_between_its_two_renames_is_put_back(tmp_path, capsys):
    from export.build import MARK

    (tmp_path / "model").mkdir()
    old = tmp_path / "export.old"
    (old / "int8").mkdir(parents=True)
    (old / MARK).write_text("")
    (old / "int8" / "manifest.json").write_text("{}")
    _export_refused({"model": str(tmp_path / "model")}, tmp_path / "export", overwrite=False, match="exists")
    assert (tmp_path / "export" / "int8" / "manifest.json").is_file() and not old.exists()


# --- one writer per folder ---------------------------------------------------------------------------------
def _holder(folder):
    """A second process that takes the folder's lock and keeps it until killed."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom factory.files import folder_lock\n"
                             "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)",
                             str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_on_a_locked_cot_build_or_run_gets_one_line(synth_root, tmp_path, capsys):
    cot, run = tmp_path / "cot", tmp_path / "runs" / "r"
    (cot / "results.jsonl").parent.mkdir(parents=True)
    (cot / "results.jsonl").write_text('{"image_id": "a"}\n')
    holders = [_holder(cot), _holder(run)]
    try:
        capsys.readouterr()
        assert main(["cot", "build", "--data", str(synth_root), "--out", str(cot), "-q"]) == 2
        assert main(["train", "--data", str(synth_root), "--output-dir", str(run.parent), "--name", "r", "-q"]) == 2
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 2 and all("in use by another svlm process" in line for line in err)
        assert (cot / "results.jsonl").read_text() == '{"image_id": "a"}\n'
    finally:
        for proc in holders:
            proc.kill()  # SIGKILL: the lock goes with the process
            proc.wait()
    from factory.files import folder_lock

    with folder_lock(cot), folder_lock(cot):  # free again; re-entrant within a process
        pass


def test_cot_resume_keeps_every_valid_line_and_sets_the_bad_ones_aside(tmp_path):
    from factory.cot.build import REJECTS, read_results

    log = tmp_path / "results.jsonl"
    lines = ['{"image_id": "a", "n": 1}', '{"image_id": "b", "n": 1}', "{garbage", '{"image_id": "a", "n": 2}',
             '["not", "a", "row"]', '{"image_id": "c", "n": 1}']
    log.write_text("\n".join(lines) + '\n{"image_id": "d", "n"')  # the last line cut by a kill
    rows = read_results(log)
    assert [(r["image_id"], r["n"]) for r in rows] == [("a", 1), ("b", 1), ("c", 1)]
    assert (tmp_path / REJECTS).read_text() == '{garbage\n["not", "a", "row"]\n'
    assert log.read_text() == "".join(line + "\n" for line in lines if line[2:10] == 'image_id' and '"n": 2' not in line)
    assert read_results(log) == rows and (tmp_path / REJECTS).read_text().count("\n") == 2  # stable on re-read


# --- the demo ----------------------------------------------------------------------------------------------
def test_the_demo_keeps_at_most_two_models_loaded(monkeypatch):
    import demo.app as app

    loads = []
    monkeypatch.setattr(app, "_load", lambda path: loads.append(path) or object())
    models = app.Models()
    a = models.get("a")
    models.get("b")
    assert models.get("a") is a  # cached, and now the most recently used
    models.get("c")  # evicts b, the least recently used
    models.get("a")
    models.get("b")
    assert loads == ["a", "b", "c", "b"]
    assert models.entry("b")[1] is not models.entry("a")[1]  # a lock per model


def test_generation_stops_when_the_client_goes_away(tmp_path):
    import threading
    import time

    import numpy as np
    from PIL import Image

    from demo.app import stream

    class Slow:
        def __init__(self):
            self.sent, self.done = 0, threading.Event()

        def generate(self, image, max_new_tokens, on_text):
            try:
                for _ in range(max_new_tokens):
                    on_text("x")
                    self.sent += 1
                    time.sleep(0.01)
            finally:
                self.done.set()

    image = tmp_path / "i.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    model = Slow()
    events = stream(model, str(image), max_new_tokens=10_000)
    assert next(events) == ("text", "x")
    events.close()  # what Gradio does when the browser disconnects
    assert model.done.wait(5) and model.sent < 100


def test_errors_shown_to_web_users_carry_no_server_paths():
    from demo.app import _public

    assert _public("cannot identify image file '/tmp/gradio/3f2a/photo.png'") == \
        "cannot identify image file 'photo.png'"
    assert _public("/srv/runs/x/export/int8: decoder.onnx is missing") == "int8: decoder.onnx is missing"
    assert _public("image is 9000x9000 pixels, over the limit; ratio 1/2") == \
        "image is 9000x9000 pixels, over the limit; ratio 1/2"


def test_share_warns_without_a_password_and_auth_comes_from_the_environment(monkeypatch, capsys):
    import demo.app as app

    calls = []
    monkeypatch.setattr(app, "launch", lambda *args, auth=None: calls.append(auth))
    assert main(["demo", "--share"]) == 0
    assert "public link" in capsys.readouterr().err and calls == [None]
    monkeypatch.setenv("SVLM_DEMO_AUTH", "ana:s3cret:with-colon")
    assert main(["demo", "--share", "--auth-env", "SVLM_DEMO_AUTH"]) == 0
    assert "public link" not in capsys.readouterr().err and calls[-1] == ("ana", "s3cret:with-colon")
    monkeypatch.setenv("SVLM_DEMO_AUTH", "no-colon")
    assert main(["demo", "--auth-env", "SVLM_DEMO_AUTH"]) == 2
    err = capsys.readouterr().err
    assert "malformed" in err and "no-colon" not in err


# --- training ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("main_process", [True, False])
def test_only_the_main_process_removes_a_checkpoint_cut_by_a_kill(tmp_path, monkeypatch, main_process):
    from types import SimpleNamespace

    import accelerate

    from factory.train.common import CHECKPOINTS, last_checkpoint

    waits = []
    monkeypatch.setattr(accelerate, "PartialState", lambda: SimpleNamespace(
        is_main_process=main_process, wait_for_everyone=lambda: waits.append(True)))
    ckpt = tmp_path / CHECKPOINTS
    (ckpt / "checkpoint-4").mkdir(parents=True)
    (ckpt / "checkpoint-4" / "trainer_state.json").write_text("{}")
    (ckpt / "checkpoint-8").mkdir()  # the kill came before trainer_state.json
    last = last_checkpoint(SimpleNamespace(out=tmp_path))
    assert waits == [True]  # every rank meets at the barrier before it picks
    if main_process:
        assert last == str(ckpt / "checkpoint-4") and not (ckpt / "checkpoint-8").exists()
    else:  # another rank touches nothing: rank 0 removes the cut folder before the barrier
        assert (ckpt / "checkpoint-8").exists()


@pytest.mark.slow
def test_an_export_killed_mid_build_keeps_the_previous_one_and_the_rerun_finishes(baseline_run, tmp_path):
    """SIGKILL while the export builds (after the merge, during the graphs): the previous export stays whole,
    the marked temporary folder is cleared by the next run, which writes the packages."""
    import signal
    import subprocess
    import sys
    import time

    from export.build import MARK
    from svlm_runtime.package import Package

    out = tmp_path / "export"
    argv = ["export", "--run", str(baseline_run), "--stage", "0_baseline", "--out", str(out), "--quant", "fp32",
            "validate_images=2", "max_new_tokens=4"]
    assert main(argv) == 0
    before = _tree(out)
    proc = subprocess.Popen([sys.executable, "-m", "factory.cli", *argv, "--overwrite"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp = tmp_path / "export.tmp"
    deadline = time.time() + 300
    while not (tmp / "merged" / "config.json").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the export ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _tree(out) == before and (tmp / MARK).is_file()
    assert main(argv + ["--overwrite"]) == 0
    assert not tmp.exists() and not (tmp_path / "export.old").exists()
    import numpy as np
    from PIL import Image

    assert Package(out / "fp32").generate(Image.fromarray(np.full((32, 32, 3), 120, np.uint8)), max_new_tokens=2)


# --- what svlm run reuses outside the stages ------------------------------------------------------------
def test_a_report_is_reused_only_when_made_with_the_same_settings(tmp_path):
    import os
    import time

    from factory.pipeline import MADE_FROM, _report_is_current

    stage = tmp_path / "4_clgrpo"
    stage.mkdir()
    (stage / "done.json").write_text("{}")
    old = time.time() - 60
    os.utime(stage / "done.json", (old, old))
    report = tmp_path / "bench" / "accuracy.json"
    report.parent.mkdir()
    write_json(report, {"models": [{"path": str(stage)}]})
    settings = {"split": "test", "limit": 0, "max_new_tokens": 160}
    args = ([report], [stage / "done.json"], [str(stage)])
    assert not _report_is_current(*args, settings)  # no record of how it was made: redone
    write_json(report.parent / MADE_FROM, settings)
    assert _report_is_current(*args, settings)
    assert not _report_is_current(*args, {**settings, "limit": 100})
    assert not _report_is_current([report], [stage / "done.json"], [str(stage), "other"], settings)
    (stage / "done.json").write_text("{}")  # the stage was retrained after the report
    assert not _report_is_current(*args, settings)


@pytest.mark.slow
@pytest.mark.parametrize("stages,stage", [("1", "1_sft"), ("1-2", "2_grpo_format")])
def test_training_killed_with_sigkill_resumes_and_trains_each_step_once(tmp_path, synth_root, cot_dir,
                                                                       small_tiny_dirs, stages, stage):
    """A real SIGKILL of `svlm train` once the stage has a checkpoint (no exception, no clean-up): the rerun
    resumes from a saved checkpoint, finishes the stage and logs every step once."""
    import signal
    import subprocess
    import sys
    import time

    steps = 30
    argv = ["train", "--stages", stages, "--output-dir", str(tmp_path), "--name", "k", "--data", str(synth_root),
            "--cot", str(cot_dir), "-q", f"model.source={small_tiny_dirs('internvl')}", "train.lora.r=4",
            "eval.limit=2", "eval.max_new_tokens=4", "train.stages.1_sft.batch_size=2",
            "train.stages.2_grpo_format.batch_size=4", "train.stages.2_grpo_format.num_generations=2",
            "train.stages.2_grpo_format.max_completion_length=8",
            f"train.stages.{stage}.max_steps={steps}", f"train.stages.{stage}.save_steps=2"]
    if stage != "1_sft":
        argv.append("train.stages.1_sft.max_steps=2")
    proc = subprocess.Popen([sys.executable, "-m", "factory.cli", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = tmp_path / "k" / stage / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    deadline = time.time() + 600
    while not first.is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    out = tmp_path / "k" / stage
    assert not (out / "done.json").exists()
    assert main(argv) == 0
    done = json.loads((out / "done.json").read_text())
    assert "checkpoint-" in (done["train"]["resumed_from"] or "")
    logged = [r["step"] for r in json.loads((out / "log_history.json").read_text()) if "loss" in r]
    assert logged == sorted(set(logged)) and max(logged) == steps
