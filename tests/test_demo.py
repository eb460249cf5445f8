"""The Gradio demo: variants are found, a gradio_client round trip answers with an emotion, bad input is
refused with a message, and a headless Chromium uploads an image and reads the answer."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from factory.prompts import EMOTIONS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(exported):
    """The app as `svlm demo` serves it (demo.app.launch: its file-size limit and queue) on a free local port,
    over a runs folder holding the tiny baseline and its packages."""
    from demo.app import launch

    out, _ = exported
    runs = out.parent.parent  # <runs>/<name>/export
    port = _free_port()
    app = launch(str(runs), host="127.0.0.1", port=port, block=False)
    yield app, f"http://127.0.0.1:{port}/"
    app.close()


@pytest.fixture(scope="module")
def toy_served(tmp_path_factory):
    """`svlm demo`'s app over a runs folder holding only a toy ONNX package (tests/toy_package.py: real
    onnxruntime graphs and a scripted answer, built in a second): for what needs no trained model."""
    from toy_package import build_toy_package

    from demo.app import launch

    runs = tmp_path_factory.mktemp("toy_runs")
    build_toy_package(runs / "toy" / "export" / "int8")
    port = _free_port()
    app = launch(str(runs), host="127.0.0.1", port=port, block=False)
    yield app, f"http://127.0.0.1:{port}/", runs / "toy" / "export" / "int8"
    app.close()


def test_svlm_demo_passes_its_options_to_the_launcher(monkeypatch, tmp_path, capsys):
    import demo.app
    from factory.cli import main

    calls = []
    monkeypatch.setattr(demo.app, "launch", lambda *a, **kw: calls.append((a, kw)))
    assert main(["demo", "--runs", str(tmp_path), "--model", "m", "--host", "0.0.0.0", "--port", "8001",
                 "--share"]) == 0
    assert calls == [((str(tmp_path), "m", "0.0.0.0", 8001, True), {"auth": None})]
    assert "http://0.0.0.0:8001" in capsys.readouterr().out


def test_served_app_limits_files_to_25_mb_and_queues_two_at_a_time_up_to_32(toy_served, tmp_path):
    """The limits `svlm demo` sets: a 26 MB upload is refused before it reaches the model; the queue runs two
    requests at a time and holds up to 32."""
    from gradio_client import Client, handle_file

    app, url, _ = toy_served
    assert app.max_file_size == 25 * 1024 * 1024
    assert app._queue.default_concurrency_limit == 2 and app._queue.max_size == 32
    big = tmp_path / "big.png"
    Image.new("RGB", (8, 8)).save(big)
    with big.open("ab") as f:  # a valid PNG followed by 26 MB: only its size is wrong
        f.write(b"\0" * (26 * 1024 * 1024))
    with pytest.raises(Exception, match="(?i)file size|too large|exceeds"):
        Client(url, verbose=False).predict(handle_file(str(big)), _default_choice(app), api_name="/analyze")


def test_find_models_offers_int8_first(exported):
    from demo.app import find_models

    out, _ = exported
    found = find_models(out.parent.parent)
    names = list(found)
    assert names[0].endswith("ONNX int8") and any("0_baseline (PyTorch)" in n for n in names)
    assert {p.rsplit("/", 1)[-1] for p in found.values()} >= {"int8", "int4", "fp32", "0_baseline"}


def test_client_round_trip_answers_with_an_emotion(served, synth_root):
    """Through the served app: every label scored, and answers that depend on the image (two or more distinct
    labels on the test images, so a variant that ignored the image could not pass)."""
    from gradio_client import Client, handle_file

    app, url = served
    client = Client(url, verbose=False)
    images = [sorted(folder.glob("*.jpg"))[0] for folder in sorted((synth_root / "image").iterdir())]  # one each
    labels = []
    for image in images:
        reasoning, label, stats = client.predict(handle_file(str(image)), _default_choice(app), api_name="/analyze")
        assert reasoning.strip()
        assert label["label"] in EMOTIONS
        assert {c["label"] for c in label["confidences"]} == set(EMOTIONS)  # every label scored in context
        assert "tokens/s" in stats and "MB" in stats
        labels.append(label["label"])
    print(f"demo labels on {len(images)} images: {labels}")
    assert len(set(labels)) >= 2


def test_reasoning_streams_token_by_token(toy_served, tmp_path):
    """An ONNX variant's text reaches the page while it is generated: one update per decoded token, each
    extending the last, before the final answer (the toy package writes its scripted answer a character a
    token)."""
    from gradio_client import Client, handle_file
    from toy_package import SCRIPT

    from demo.app import Models, stream

    app, url, package = toy_served
    image = tmp_path / "x.png"
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(image)
    events = list(stream(Models().get(str(package)), str(image), max_new_tokens=64))
    texts = [value for kind, value in events if kind == "text"]
    done = events[-1][1]
    assert events[-1][0] == "done" and done["text"] == SCRIPT and texts[-1] == SCRIPT
    assert len(texts) == len(SCRIPT) == done["tokens"] - 1  # one update per token; the end token shows nothing
    assert all(b.startswith(a) and len(b) == len(a) + 1 for a, b in zip(texts, texts[1:]))

    job = Client(url, verbose=False).submit(handle_file(str(image)), _default_choice(app), api_name="/analyze")
    job.result()
    updates = [reasoning for reasoning, _, _ in job.outputs()]
    assert len(updates) >= 3 and updates[-1] == SCRIPT
    assert all(b.startswith(a) for a, b in zip(updates, updates[1:]))
    assert job.outputs()[0][2] == "generating…"


def test_pytorch_variant_streams_and_scores_every_label(baseline_run, synth_root):
    """The demo's PyTorch path (a trained stage): streamed text, the greedy label, and per-label probabilities
    from the same scoring as the ONNX runtime, forced when the answer is cut off."""
    from demo.app import Models, stream

    model = Models().get(str(baseline_run / "0_baseline"))
    image = str(next((synth_root / "image").rglob("*.jpg")))
    events = list(stream(model, image, max_new_tokens=12))
    kind, result = events[-1]
    assert kind == "done" and events[0][0] == "text" and events[-2][1] == result["text"]
    assert result["label"] in EMOTIONS and not result["forced"]
    assert abs(sum(result["probs"].values()) - 1) < 1e-6 and max(result["probs"], key=result["probs"].get) == \
        result["label"]
    cut = list(stream(model, image, max_new_tokens=2))[-1][1]
    assert cut["label"] is None and cut["forced"] and set(cut["probs"]) == set(EMOTIONS)


def _default_choice(app) -> str:
    for block in app.blocks.values():
        if getattr(block, "elem_id", None) == "model":
            return block.value
    raise AssertionError("no model dropdown")


@pytest.mark.parametrize("make,message", [
    (lambda d: d / "notes.txt", "not a readable image"),  # Gradio's own check, its message replaced
    (lambda d: d / "huge.png", "pixel limit"),
])
def test_bad_images_are_refused_with_a_message(served, tmp_path, make, message):
    from gradio_client import Client, handle_file

    app, url = served
    path = make(tmp_path)
    if path.suffix == ".txt":
        path.write_text("this is not an image")
    else:  # 9000 x 9000 of one colour: a small file, 81 MP once decoded
        Image.new("L", (9000, 9000)).save(path, optimize=True)
    client = Client(url, verbose=False)
    with pytest.raises(Exception, match=message) as err:
        client.predict(handle_file(str(path)), _default_choice(app), api_name="/analyze")
    assert str(tmp_path) not in str(err.value) and "/tmp/" not in str(err.value)  # no server paths


def test_empty_input_is_refused(served):
    from gradio_client import Client

    app, url = served
    with pytest.raises(Exception, match="Upload an image"):
        Client(url, verbose=False).predict(None, _default_choice(app), api_name="/analyze")


def test_onnx_demo_path_imports_no_torch(exported, tmp_path):
    out, _ = exported
    code = ("import sys; from demo.app import build_app, find_models, stream, Models; "
            f"m = Models().get({str(out / 'int8')!r}); "
            f"import numpy as np; from PIL import Image; Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save("
            f"{str(tmp_path / 'x.png')!r}); "
            f"kinds = [k for k, _ in stream(m, {str(tmp_path / 'x.png')!r}, 6)]; assert kinds[-1] == 'done'; "
            "bad = [n for n in ('torch', 'transformers', 'trl', 'peft') if n in sys.modules]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def genai_runs(tiny_dirs, tmp_path_factory):
    """A runs folder whose run ``q`` holds only an fp32 GenAI package (svlm export --layout genai) of the tiny
    random Qwen2.5-VL, where the export writes it: ``q/export-genai/fp32``."""
    pytest.importorskip("onnxruntime_genai")  # .ci/run installs it (the genai extra): never skipped there
    from export.build import ExportConfig, export

    runs = tmp_path_factory.mktemp("genai_runs")
    export(ExportConfig(model=str(tiny_dirs("qwen2_5_vl")), out=str(runs / "q" / "export-genai"), layout="genai",
                        quant=["fp32"], validate_images=1, max_new_tokens=4))
    return runs


def test_find_models_offers_genai_packages(genai_runs):
    from demo.app import find_models

    assert find_models(genai_runs) == {"q · GenAI fp32 (onnxruntime-genai)": str(genai_runs / "q/export-genai/fp32")}


def test_genai_variant_answers_with_every_labels_probability(genai_runs, tmp_path):
    """Through the served app, a GenAI package's answer comes with the chart of every label's probability, the
    ones GenAIModel scores itself (the random model gives no valid answer: forced, and said so)."""
    from gradio_client import Client, handle_file

    from demo.app import launch
    from svlm_runtime.genai import GenAIModel

    image = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (224, 336, 3), dtype=np.uint8)).save(image)
    port = _free_port()
    app = launch(str(genai_runs), host="127.0.0.1", port=port, block=False)
    try:
        assert _default_choice(app) == "q · GenAI fp32 (onnxruntime-genai)"
        reasoning, label, stats = Client(f"http://127.0.0.1:{port}/", verbose=False).predict(
            handle_file(str(image)), _default_choice(app), api_name="/analyze")
    finally:
        app.close()
    model = GenAIModel(genai_runs / "q/export-genai/fp32")
    want = model.generate(str(image))
    shown = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert reasoning == want.text and set(shown) == set(model.labels) and want.label_probs_forced
    assert max(abs(shown[k] - p) for k, p in want.label_probs.items()) < 1e-6
    assert max(shown.values()) - min(shown.values()) > 0.01  # the model's scores, not a placeholder
    assert "forced" in stats and "tokens/s" in stats and f"{model.size_bytes / 1e6:.1f} MB" in stats


def test_genai_demo_path_imports_no_torch(genai_runs, tmp_path):
    code = ("import sys; from demo.app import Models, stream; "
            f"m = Models().get({str(genai_runs / 'q/export-genai/fp32')!r}); "
            f"import numpy as np; from PIL import Image; Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save("
            f"{str(tmp_path / 'x.png')!r}); "
            f"kind, done = list(stream(m, {str(tmp_path / 'x.png')!r}, 6))[-1]; "
            "assert kind == 'done' and abs(sum(done['probs'].values()) - 1) < 1e-6, done; "
            "bad = [n for n in ('torch', 'transformers', 'trl', 'peft') if n in sys.modules]; assert not bad, bad")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def require_chromedriver() -> str:
    """chromedriver's path; without it the browser test skips, or fails where SVLM_REQUIRE_BROWSER=1 (.ci/run
    sets it: a test CI is meant to run must not pass by skipping)."""
    path = shutil.which("chromedriver")
    if path is None:
        reason = "Debian's chromium-driver is not installed (.ci/run installs it)"
        if os.environ.get("SVLM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"SVLM_REQUIRE_BROWSER=1 but the browser test cannot run: {reason}")
        pytest.skip(reason)
    return path


@pytest.fixture
def chromedriver() -> str:
    return require_chromedriver()


@pytest.mark.parametrize("required", ["1", None])
def test_missing_chromedriver_fails_where_the_browser_is_required(monkeypatch, required):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    if required:
        monkeypatch.setenv("SVLM_REQUIRE_BROWSER", required)
    else:
        monkeypatch.delenv("SVLM_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.fail.Exception if required else pytest.skip.Exception):
        require_chromedriver()


def test_browser_uploads_an_image_and_reads_the_answer(chromedriver, served, synth_root, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    app, url = served
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        opts.add_argument(arg)
    if shutil.which("chromium"):
        opts.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(chromedriver), options=opts)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 60)
        upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#image input[type=file]")))
        image = next((synth_root / "image").rglob("*.jpg"))
        upload.send_keys(str(image))
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#image img")))
        driver.find_element(By.ID, "analyze").click()
        wait.until(lambda d: "tokens/s" in d.find_element(By.ID, "stats").text)
        answer = driver.find_element(By.ID, "emotion").text
        reasoning = driver.find_element(By.CSS_SELECTOR, "#reasoning textarea").get_attribute("value")
        shot = tmp_path / "demo.png"
        driver.save_screenshot(str(shot))
        print(f"browser saw: emotion panel {answer.splitlines()[:3]}, reasoning {reasoning[:60]!r}, "
              f"screenshot {shot}")
        assert any(e in answer for e in EMOTIONS)
        assert reasoning.strip()
        assert shot.stat().st_size > 10_000
    finally:
        driver.quit()
