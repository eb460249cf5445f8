"""The Gradio demo: variants are found, a gradio_client round trip answers with an emotion, bad input is
refused with a message, and a headless Chromium uploads an image and reads the answer."""

from __future__ import annotations

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
def served(exported, tmp_path_factory):
    """The app on a free local port, over a runs folder holding the tiny baseline and its packages."""
    from demo.app import build_app

    out, _ = exported
    runs = out.parent.parent  # <runs>/<name>/export
    app = build_app(runs, examples_dir=tmp_path_factory.mktemp("examples"))
    port = _free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, max_file_size="25mb",
               show_error=True)
    yield app, f"http://127.0.0.1:{port}/"
    app.close()


def test_find_models_offers_int8_first(exported):
    from demo.app import find_models

    out, _ = exported
    found = find_models(out.parent.parent)
    names = list(found)
    assert names[0].endswith("ONNX int8") and any("0_baseline (PyTorch)" in n for n in names)
    assert {p.rsplit("/", 1)[-1] for p in found.values()} >= {"int8", "int4", "fp32", "0_baseline"}


def test_client_round_trip_answers_with_an_emotion(served, synth_root):
    from gradio_client import Client, handle_file

    app, url = served
    client = Client(url, verbose=False)
    image = next((synth_root / "image").rglob("*.jpg"))
    reasoning, label, stats = client.predict(handle_file(str(image)), _default_choice(app), api_name="/analyze")
    assert reasoning.strip()
    assert label["label"] in EMOTIONS
    assert {c["label"] for c in label["confidences"]} == set(EMOTIONS)  # every label scored in context
    assert "tokens/s" in stats and "MB" in stats


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
    (lambda d: d / "notes.txt", "cannot identify image file|not a readable image"),  # gradio's check or ours
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
    with pytest.raises(Exception, match=message):
        client.predict(handle_file(str(path)), _default_choice(app), api_name="/analyze")


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


@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="Debian's chromium-driver is not installed "
                    "(.ci/run installs it)")
def test_browser_uploads_an_image_and_reads_the_answer(served, synth_root, tmp_path):
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
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
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
