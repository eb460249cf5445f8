"""``svlm demo``: a Gradio app that streams the model's reasoning about an image (its task's: EmoSet's emotions
by default).

    svlm demo                                  # the int8 ONNX package of the newest run, on 127.0.0.1:7860
    svlm demo --model runs/default/export/int4 --port 8000

Pick an example or upload an image, choose a model variant (every ONNX, GGUF and ONNX Runtime GenAI package and
trained stage found under ``--runs``), and the reasoning streams in as it is generated; the answer shows as a
label with a per-label probability chart (the variant's task's labels) (each label scored as a whole token sequence after the model's
``<answer>``, ``svlm_runtime.label_scoring``; marked "forced" when the model gave no valid answer and the labels
were scored after its reasoning), next to time to first token, tokens/s and the model's size. Package variants run on
``svlm_runtime`` (GenAI packages through onnxruntime-genai, GGUF ones through llama.cpp) and never import torch;
PyTorch stage outputs load torch only when chosen. Bad input (not an image, over 64 MP, nothing uploaded) is
refused with a visible message.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from pathlib import Path

from factory.layout import RunLayout

EXAMPLES_PER_CLASS = 1


def find_models(runs: str | Path = "runs") -> dict[str, str]:
    """Display name → path for every ONNX, GGUF and GenAI package and finished stage under ``runs``, newest run
    first, int8 ONNX first within a run (the default)."""
    from svlm_runtime.genai import MANIFEST as GENAI_MANIFEST

    root = Path(runs)
    if not root.is_dir():
        return {}
    found: dict[str, str] = {}
    rank = {"int8": 0, "int4": 1, "fp32": 2}
    for run in sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True):
        packages = sorted(RunLayout(run).packages(), key=lambda p: rank.get(p.name, 9))
        for pkg in packages:
            found[f"{run.name} · ONNX {pkg.name}"] = str(pkg)
        # GGUF packages (svlm export --layout gguf) run in llama.cpp through llama-cpp-python
        gguf = RunLayout(run).export_for("gguf")
        for pkg in sorted(m.parent for m in gguf.glob("*/manifest.json")):
            found[f"{run.name} · GGUF {pkg.name} (llama.cpp)"] = str(pkg)
        # GenAI packages (svlm export --layout genai) run in onnxruntime-genai
        genai = RunLayout(run).export_for("genai")
        for pkg in sorted((m.parent for m in genai.glob(f"*/{GENAI_MANIFEST}")), key=lambda p: rank.get(p.name, 9)):
            found[f"{run.name} · GenAI {pkg.name} (onnxruntime-genai)"] = str(pkg)
        for stage in reversed(RunLayout(run).finished()):
            found[f"{run.name} · {stage} (PyTorch)"] = str(RunLayout(run).stage(stage))
    return found


def example_images(folder: Path) -> list[str]:
    """One synthetic image per class folder of the project's generator (EmoSet's emotions), written once."""
    from factory.data.synth import SynthConfig, generate

    if not (folder / "image").is_dir():
        generate(SynthConfig(out=str(folder), n=8 * 10, seed=7, image_size=160), progress=False)
    return [str(sorted(d.glob("*.jpg"))[0]) for d in sorted((folder / "image").iterdir()) if d.is_dir()]


def model_labels(path: str | Path) -> tuple[str, ...]:
    """The labels a variant answers, read without loading it: a stage's (or merged checkpoint's) ``task.yaml``,
    else the package manifest's ``labels`` (every layout writes them); () when neither says."""
    import json

    from factory.tasks import TASK_FILENAME, folder_task

    path = Path(path)
    if (path / TASK_FILENAME).is_file() or (path / "adapter").is_dir():
        return tuple(folder_task(path).labels)  # folders from before tasks: EmoSet's
    for name in ("manifest.json", "svlm_manifest.json"):
        if (path / name).is_file():
            try:
                return tuple(json.loads((path / name).read_text()).get("labels", ()))
            except (ValueError, AttributeError):
                return ()
    return ()


class Models:
    """The loaded variants: at most ``keep`` at once (least recently used goes first, so a user clicking
    through every fp32 stage cannot fill the memory), each with its own lock, so one generation at a time
    runs on a model while other models serve other users."""

    def __init__(self, keep: int = 2):
        from collections import OrderedDict

        self.keep = keep
        self._cache: OrderedDict[str, tuple[object, threading.Lock]] = OrderedDict()
        self._lock = threading.Lock()

    def entry(self, path: str) -> tuple[object, threading.Lock]:
        """(model, its lock), loaded on first use."""
        with self._lock:
            if path in self._cache:
                self._cache.move_to_end(path)
            else:
                self._cache[path] = (_load(path), threading.Lock())
                while len(self._cache) > self.keep:
                    self._cache.popitem(last=False)
            return self._cache[path]

    def get(self, path: str):
        return self.entry(path)[0]


def _load(path: str):
    from factory.inference import open_model  # torch only when a PyTorch variant is chosen

    return open_model(path)


class _Stopped(Exception):
    """Raised inside generation when nobody is reading any more (the browser left)."""


def stream(model, image_path: str, max_new_tokens: int = 160, lock: threading.Lock | None = None):
    """Yield ("text", partial text) while generating, then ("done", result dict); ``model`` is a package or a
    PyTorch stage (``factory.inference``). Closing the generator (Gradio does when the client disconnects)
    stops the generation at its next token. ``lock``: held while generating."""
    from svlm_runtime.preprocess import load_image

    image = load_image(image_path)  # raises ValueError with a readable message for bad input
    chunks: queue.Queue = queue.Queue()
    box: dict = {}
    stop = threading.Event()

    def on_text(piece: str) -> None:
        if stop.is_set():
            raise _Stopped
        chunks.put(piece)

    def work():
        try:
            with lock or contextlib.nullcontext():
                if stop.is_set():
                    return
                g = model.generate(image, max_new_tokens=max_new_tokens, on_text=on_text)
            box["result"] = {"text": g.text, "label": g.label, "probs": g.label_probs,
                             "forced": g.label_probs_forced, "ttft_s": g.ttft_s,
                             "tokens_per_s": g.tokens_per_s, "tokens": g.tokens}
        except _Stopped:
            pass
        except Exception as exc:  # surfaced to the user below
            box["error"] = exc
        finally:
            chunks.put(None)

    threading.Thread(target=work, daemon=True).start()
    text = ""
    try:
        while (piece := chunks.get()) is not None:
            text += piece
            yield "text", text
    finally:
        stop.set()  # a closed generator (GeneratorExit) lands here too
    if "error" in box:
        raise box["error"]
    yield "done", box["result"]


def _readable_only(preprocess, gr):
    """Gradio's image check, with its error (which names the upload's path on the server) replaced by ours."""

    def checked(payload):
        try:
            return preprocess(payload)
        except Exception:
            raise gr.Error("That file is not a readable image.") from None

    return checked


def _public(message: str) -> str:
    """An error message without the server's paths (a web user sees it): each absolute path becomes its
    file name."""
    import re

    return re.sub(r"(?<![\w.])/(?:[^\s'\"/]+/)*([^\s'\"/]+)", r"\1", message)


def build_app(runs: str | Path = "runs", model: str | None = None, examples_dir: str | Path | None = None):
    """The Gradio Blocks app."""
    import tempfile

    import gradio as gr

    choices = find_models(runs)
    if model is not None:
        if not Path(model).is_dir():
            from factory.errors import SVLMError

            raise SVLMError(f"--model {model} is not a folder")
        choices = {f"{Path(model).name} ({model})": str(model), **choices}
    if not choices:
        from factory.errors import SVLMError

        raise SVLMError(f"no exported package or trained stage under {runs}; run `svlm run` first or pass --model")
    default = next(iter(choices))
    models = Models()
    # a private folder (mode 0700): a fixed /tmp path would let another local user plant the "examples"
    examples = example_images(Path(examples_dir or tempfile.mkdtemp(prefix="svlm_demo_examples_")))

    def analyze(image_path, choice):
        if not image_path:
            raise gr.Error("Upload an image or pick an example first.")
        if choice not in choices:
            raise gr.Error(f"Unknown model {choice!r}.")
        try:
            mdl, lock = models.entry(choices[choice])
            for kind, value in stream(mdl, image_path, lock=lock):
                if kind == "text":
                    yield value, None, "generating…"
                else:
                    label = value["label"] or "no valid answer"
                    probs = value["probs"] or ({value["label"]: 1.0} if value["label"] else {})
                    if value.get("forced"):
                        label += " (probabilities forced after the reasoning)"
                    stats = (f"**{label}** · time to first token {value['ttft_s'] * 1e3:.0f} ms · "
                             f"{value['tokens_per_s']:.0f} tokens/s · {value['tokens']} tokens · "
                             f"model {mdl.size_bytes / 1e6:.1f} MB")
                    yield value["text"], (probs or label), stats
        except ValueError as exc:  # the image: not one, unreadable, too large
            raise gr.Error(_public(str(exc))) from None
        except Exception as exc:  # the full story goes to the server's log, the user gets it without paths
            logging.getLogger("svlm.demo").exception("analyze failed")
            raise gr.Error(f"{type(exc).__name__}: {_public(str(exc))}") from None

    label_sets = {model_labels(path) for path in choices.values()} - {()}
    answers = (f"answers one of: {', '.join(next(iter(label_sets)))}." if len(label_sets) == 1 else
               "answers one of its task's labels (the chart lists them).")
    with gr.Blocks(title="SVLM Factory: visual reasoning") as app:
        gr.Markdown(f"# Visual reasoning on a small VLM\nUpload an image; the model reasons in `<think>` and {answers}")
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="image", sources=["upload"], elem_id="image")
                image.preprocess = _readable_only(image.preprocess, gr)
                choice = gr.Dropdown(list(choices), value=default, label="model variant", elem_id="model")
                button = gr.Button("Analyze", variant="primary", elem_id="analyze")
                gr.Examples(examples, inputs=image, label="examples (synthetic)")
            with gr.Column():
                label = gr.Label(label="answer", num_top_classes=max(map(len, label_sets), default=8),
                                 elem_id="emotion")
                reasoning = gr.Textbox(label="reasoning (streamed)", lines=8, elem_id="reasoning")
                stats = gr.Markdown(elem_id="stats")
        button.click(analyze, [image, choice], [reasoning, label, stats], api_name="analyze")
    app.queue(default_concurrency_limit=2, max_size=32)
    return app


def auth_from_env(name: str | None) -> tuple[str, str] | None:
    """(user, password) from the environment variable ``name`` holding ``user:password``; None without a
    name. The credentials never pass through the command line (where ``ps`` shows them)."""
    if name is None:
        return None
    import os

    from factory.errors import SVLMError

    value = os.environ.get(name, "")
    user, sep, password = value.partition(":")
    if not (sep and user and password):
        raise SVLMError(f"--auth-env {name}: set it to user:password (it is {'unset' if not value else 'malformed'})")
    return user, password


def launch(runs: str = "runs", model: str | None = None, host: str = "127.0.0.1", port: int = 7860,
           share: bool = False, block: bool = True, auth: tuple[str, str] | None = None):
    """Serve the app; ``auth``: (user, password) the browser must give. Users see only ``gr.Error`` messages,
    which carry no server paths (``show_error`` off: any other exception shows as a bare "Error")."""
    app = build_app(runs, model)
    app.launch(server_name=host, server_port=port, share=share, max_file_size="25mb",
               prevent_thread_lock=not block, show_error=False, auth=auth)
    return app
