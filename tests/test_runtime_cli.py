"""``svlm-infer`` and the runtime as a distribution of its own, on the toy package (``toy_package.py``):
what the CLI prints, its exit codes, ``--json`` against ``Package.generate``, and that ``svlm_runtime``
imports nothing of the training side. The slow test installs ``./runtime`` into a fresh virtual environment
without torch and checks that its ``svlm-infer`` answers exactly as the in-repo runtime does."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from factory.prompts import EMOTIONS
from svlm_runtime import Package
from svlm_runtime.cli import main

from toy_package import SCRIPT, build_toy_package

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("label", "well_formed", "label_probs", "label_probs_forced", "text", "token_ids", "stopped")


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    return build_toy_package(tmp_path_factory.mktemp("toy") / "pkg")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two images of different colour (the toy decoder's probabilities follow the mean colour)."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, value in enumerate((60, 200)):
        paths.append(folder / f"img{i}.png")
        Image.fromarray(np.full((20, 30, 3), value, np.uint8)).save(paths[-1])
    return [str(p) for p in paths]


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_text_output_names_label_probabilities_reasoning_and_timings(toy_dir, images, capsys):
    code, out, err = _run(capsys, toy_dir, images[0])
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"{images[0]}: awe"
    probs = dict(zip(lines[1].split()[1::2], map(float, lines[1].split()[2::2])))
    assert lines[1].startswith("  probabilities: ") and set(probs) == set(EMOTIONS)
    assert list(probs.values()) == sorted(probs.values(), reverse=True) and next(iter(probs)) == "awe"
    assert lines[2] == "  reasoning: grey sky"
    assert lines[3].startswith("  time to first token ") and "tokens/s" in lines[3] and "(eos)" in lines[3]
    assert len(lines) == 4


def test_json_is_one_object_per_image_equal_to_generate(toy_dir, images, capsys):
    code, out, err = _run(capsys, toy_dir, *images, "--json")
    assert code == 0 and err == ""
    records = [json.loads(line) for line in out.splitlines()]
    pkg = Package(toy_dir)
    assert [r["image"] for r in records] == images
    for record, image in zip(records, images):
        expected = pkg.generate(image)
        assert {k: record[k] for k in FIELDS} == {k: getattr(expected, k) for k in FIELDS}
        assert record["reasoning"] == "grey sky" and record["tokens_per_s"] > 0 and record["ttft_s"] > 0
    assert records[0]["label_probs"] != records[1]["label_probs"]  # each image is its own run


def test_stream_prints_the_text_as_it_is_generated(toy_dir, images, monkeypatch, capsys):
    deltas = []
    real = Package.generate

    def spy(self, image=None, **kw):
        if kw.get("on_text"):
            show = kw["on_text"]
            kw["on_text"] = lambda delta: (deltas.append(delta), show(delta))
        return real(self, image, **kw)
    monkeypatch.setattr(Package, "generate", spy)
    code, out, _ = _run(capsys, toy_dir, images[0], "--stream")
    assert code == 0 and out.startswith(f"{images[0]}: {SCRIPT}\n{images[0]}: awe\n")
    assert "".join(deltas) == SCRIPT and len(deltas) == len(SCRIPT)  # a character at a time, not the whole text


def test_stream_with_json_keeps_stdout_json(toy_dir, images, capsys):
    code, out, err = _run(capsys, toy_dir, images[0], "--stream", "--json")
    assert code == 0 and err == SCRIPT + "\n"
    assert json.loads(out)["text"] == SCRIPT


def test_max_new_tokens_and_threads_reach_the_runtime(toy_dir, images, capsys, monkeypatch):
    seen = {}
    real = Package.__init__

    def spy(self, path, threads=None, providers=None, verify=True):
        seen.update(threads=threads, verify=verify)
        real(self, path, threads=threads, providers=providers, verify=verify)
    monkeypatch.setattr(Package, "__init__", spy)
    code, out, _ = _run(capsys, toy_dir, images[0], "--json", "--threads", "1", "--max-new-tokens", "11",
                        "--no-verify")
    record = json.loads(out)
    assert code == 0 and seen == {"threads": 1, "verify": False}
    assert len(record["token_ids"]) == 11 and record["stopped"] == "length" and record["label"] is None
    assert record["reasoning"] == "grey"  # an unfinished think block is still reasoning


def _damaged_copy(toy_dir, tmp_path) -> Path:
    pkg = tmp_path / "pkg"
    shutil.copytree(toy_dir, pkg)
    manifest = json.loads((pkg / "manifest.json").read_text())
    manifest["files"]["embed.onnx"]["sha256"] = "0" * 64  # what a swapped file of the same size looks like
    (pkg / "manifest.json").write_text(json.dumps(manifest))
    return pkg


@pytest.mark.parametrize("package,message", [
    (lambda toy, tmp: tmp / "nowhere", "no package at"),
    (_damaged_copy, "embed.onnx does not match its sha256"),
])
def test_a_bad_package_is_one_line_and_exit_2(toy_dir, images, tmp_path, capsys, package, message):
    code, out, err = _run(capsys, package(toy_dir, tmp_path), images[0])
    assert code == 2 and out == "" and err.startswith("svlm-infer: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_no_verify_skips_the_hash_check(toy_dir, images, tmp_path, capsys):
    code, out, _ = _run(capsys, _damaged_copy(toy_dir, tmp_path), images[0], "--no-verify", "--json")
    assert code == 0 and json.loads(out)["label"] == "awe"


def test_a_bad_image_is_one_line_the_others_still_run_and_exit_2(toy_dir, images, tmp_path, capsys):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("not an image")
    code, out, err = _run(capsys, toy_dir, not_image, images[0], tmp_path / "missing.png", "--json")
    assert code == 2 and [json.loads(line)["image"] for line in out.splitlines()] == [images[0]]
    assert err.count("\n") == 2 and all(line.startswith("svlm-infer: error: not a readable image")
                                        for line in err.splitlines())
    assert "notes.jpg" in err.splitlines()[0] and "missing.png" in err.splitlines()[1]


@pytest.mark.parametrize("argv", [["--threads", "0"], ["--max-new-tokens", "x"], []])
def test_bad_arguments_are_usage_errors(toy_dir, images, capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main([str(toy_dir), *(images[:1] if argv else []), *argv])
    assert exit_info.value.code == 2 and "usage: svlm-infer" in capsys.readouterr().err


def test_help_names_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for option in ("PACKAGE", "IMAGE", "--json", "--stream", "--threads", "--max-new-tokens", "--no-verify"):
        assert option.lower() in out.lower()


def test_the_installed_command_runs_without_the_training_side(toy_dir, images, tmp_path):
    """The console script, run from outside the repository: prints JSON and imports no torch, transformers,
    trl, peft, factory or export (checked inside the process that ran it)."""
    exe = shutil.which("svlm-infer") or pytest.fail("svlm-infer is not installed: pip install -e ./runtime")
    assert subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.startswith("svlm-infer 0.")
    code = ("import sys; sys.argv = ['svlm-infer', *sys.argv[1:]]\n"
            "from svlm_runtime.cli import main\n"
            "code = main()\n"
            "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'trl', 'peft', "
            "'factory', 'export'})\n"
            "print('IMPORTED', bad, file=sys.stderr); sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code, str(toy_dir), images[0], "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "IMPORTED []" in proc.stderr and json.loads(proc.stdout)["label"] == "awe"


def test_factory_pins_the_runtime_it_ships_with():
    """svlm-factory depends on this svlm-runtime version; ``pip install -e ./runtime -e .`` resolves it."""
    import svlm_runtime

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    runtime = tomllib.loads((ROOT / "runtime" / "pyproject.toml").read_text())
    assert f"svlm-runtime=={svlm_runtime.__version__}" in root["project"]["dependencies"]
    deps = {d.split(">")[0].split("=")[0].strip().lower() for d in runtime["project"]["dependencies"]}
    assert deps == {"numpy", "onnxruntime", "tokenizers", "pillow"}
    assert runtime["project"]["scripts"] == {"svlm-infer": "svlm_runtime.cli:main"}


@pytest.mark.slow
def test_runtime_installs_alone_in_a_fresh_venv_and_answers_like_the_repo(toy_dir, images, tmp_path):
    """``pip install ./runtime`` into a fresh virtual environment (no system site packages): torch cannot be
    imported there, and its ``svlm-infer --json`` gives the in-repo runtime's labels, probabilities and text.
    Needs the package index (numpy, onnxruntime, tokenizers, Pillow); about a minute with a warm pip cache."""
    start = time.perf_counter()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python, infer = venv / "bin" / "python", venv / "bin" / "svlm-infer"
    # a copy, so the build leaves nothing in the checkout (setuptools writes build/ and *.egg-info next to it)
    src = shutil.copytree(ROOT / "runtime", tmp_path / "runtime",
                          ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(src)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True, env=env)
    assert probe.returncode != 0 and "No module named 'torch'" in probe.stderr
    probe = subprocess.run([str(python), "-c", "import factory"], capture_output=True, text=True, env=env,
                           cwd=tmp_path)
    assert probe.returncode != 0
    proc = subprocess.run([str(infer), str(toy_dir), *images, "--json"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    pkg = Package(toy_dir)
    for record, image in zip(records, images, strict=True):
        expected = pkg.generate(image)
        assert {k: record[k] for k in FIELDS if k != "label_probs"} == \
            {k: getattr(expected, k) for k in FIELDS if k != "label_probs"}
        # the venv may get a newer onnxruntime or numpy than this one: equal up to float rounding
        assert record["label_probs"] == pytest.approx(expected.label_probs, abs=1e-6)
    print(f"fresh-venv install and run: {time.perf_counter() - start:.0f} s")
