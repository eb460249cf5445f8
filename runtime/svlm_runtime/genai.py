"""An ONNX Runtime GenAI package (``svlm export --layout genai``) behind the runtime's model interface, so that
``svlm bench latency`` / ``svlm bench accuracy`` time and score it beside the svlm and GGUF packages.

GenAI (``onnxruntime-genai``, an optional dependency: ``pip install onnxruntime-genai==0.18.0``) preprocesses the
image, runs the vision and embedding graphs and decodes by itself; this wrapper only times it and parses the
answer. No torch, no transformers. Not yet: per-label probabilities (``label_probs``; the demo needs them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from svlm_runtime.answer_format import AnswerFormat
from svlm_runtime.package import Generation, PackageError, sha256

MANIFEST = "svlm_manifest.json"
LAYOUT = "genai"


def is_genai_package(path: str | Path) -> bool:
    """Whether ``path`` holds a GenAI package's manifest (cheap: reads one JSON file)."""
    mf = Path(path) / MANIFEST
    try:
        return mf.is_file() and json.loads(mf.read_text()).get("layout") == LAYOUT
    except (OSError, ValueError, AttributeError):
        return False


def read_genai_manifest(path: str | Path, verify: bool = True) -> dict:
    """The manifest, every listed file present with its size and (``verify``) its sha256."""
    root = Path(path)
    if not is_genai_package(root):
        raise PackageError(f"{root} is not a GenAI package ({MANIFEST} with layout {LAYOUT!r} is missing)")
    manifest = json.loads((root / MANIFEST).read_text())
    for name, info in manifest.get("files", {}).items():
        f = root / name
        if Path(name).name != name or not f.is_file():
            raise PackageError(f"{root} is incomplete: {name} is missing")
        if f.stat().st_size != info["bytes"] or (verify and sha256(f) != info["sha256"]):
            raise PackageError(f"{root}: {name} does not match the manifest (truncated, damaged or altered)")
    return manifest


class GenAIModel:
    """``generate`` / ``generate_batch`` / ``name`` / ``kind`` / ``style`` / ``size_bytes`` for a GenAI package;
    one image at a time (the package's prompt holds one image)."""

    kind = "genai"

    def __init__(self, path: str | Path, threads: int | None = None, verify: bool = True):
        try:
            import onnxruntime_genai as og
        except ImportError:
            raise PackageError("GenAI packages need onnxruntime-genai: pip install onnxruntime-genai==0.18.0") \
                from None
        self.root = Path(path)
        self.manifest = read_genai_manifest(self.root, verify)
        config = og.Config(str(self.root))
        if threads:  # every session of the package (decoder, vision, embedding)
            options = {"session_options": {"intra_op_num_threads": threads}}
            config.overlay(json.dumps({"model": {k: options for k in ("decoder", "vision", "embedding")}}))
        self.og, self.model = og, og.Model(config)
        self.processor = self.model.create_multimodal_processor()
        self.tokenizer = og.Tokenizer(self.model)
        self.prompt = self.manifest["prompt"]
        self.labels = self.manifest["labels"]
        self.answer_format = AnswerFormat.from_manifest(self.manifest)
        self.style = self.manifest["source"].get("question_style", "cot")

    @property
    def size_bytes(self) -> int:
        return self.manifest["size_bytes"]

    @property
    def name(self) -> str:
        return f"{self.manifest['source'].get('stage') or 'model'} genai-{self.manifest['quantization']['name']}"

    def _images(self, image):
        og = self.og
        if isinstance(image, (str, Path)):
            return og.Images.open(str(image))
        import io

        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")  # lossless: GenAI decodes the same pixels
        return og.Images.open_bytes(buf.getvalue())

    def generate(self, image, *, max_new_tokens: int = 160, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, on_text=None, label_probs: bool = True) -> Generation:
        """Greedy (or sampled) generation for one image. ``vision_s`` is 0: GenAI runs the vision graph inside
        the prompt's run, which ``ttft_s`` covers."""
        if label_probs:
            raise PackageError("GenAI packages give no per-label probabilities yet; pass label_probs=False")
        og = self.og
        t0 = time.perf_counter()
        inputs = self.processor(self.prompt, images=self._images(image))
        t_pre = time.perf_counter()
        params = og.GeneratorParams(self.model)
        n = int(inputs["input_ids"].as_numpy().shape[-1])
        search = {"max_length": n + max_new_tokens, "do_sample": temperature > 0}
        if temperature > 0:
            search.update(temperature=temperature, top_p=top_p, top_k=0)
            if seed is not None:
                search["random_seed"] = seed
        params.set_search_options(**search)
        gen = og.Generator(self.model, params)
        gen.set_inputs(inputs)
        ids, first, stopped, sent = [], None, "length", 0
        eos = set(self.tokenizer.eos_token_ids)
        while not gen.is_done():
            gen.generate_next_token()
            first = first or time.perf_counter()
            token = int(gen.get_next_tokens()[0])
            if token in eos:
                stopped = "eos"
                break
            ids.append(token)
            if on_text is not None:  # as Package streams: up to the last whole character, so what was sent stays
                text = self.tokenizer.decode(ids)
                ready = len(text.rstrip("\ufffd"))
                if ready > sent:
                    on_text(text[sent:ready])
                    sent = ready
        end = time.perf_counter()
        first = first or end
        text = self.tokenizer.decode(ids)
        if on_text is not None and len(text) > sent:
            on_text(text[sent:])
        parsed = self.answer_format.parse(text)
        return Generation(text=text, token_ids=ids, label=parsed.label, well_formed=parsed.well_formed,
                          ttft_s=first - t0, decode_s=end - first, preprocess_s=t_pre - t0, stopped=stopped)

    def generate_batch(self, images, *, max_new_tokens: int = 160, batch_size: int = 8, temperature: float = 0.0,
                       top_p: float = 1.0, seed: int | None = None, label_probs: bool = True, on_batch=None,
                       workers: int | None = None) -> list[Generation]:
        """``generate`` for each image in turn (``batch_size`` and ``workers`` do not apply)."""
        out = []
        for i, image in enumerate(images):
            out.append(self.generate(image, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                     seed=None if seed is None else seed + i, label_probs=label_probs))
            if on_batch is not None:
                on_batch(1)
        return out
