"""What a benchmark can measure: a PyTorch stage output or an ONNX package, behind one interface.

A model spec is a path:
* an ONNX package (a folder with ``manifest.json``, written by ``svlm export``);
* a stage output (``runs/NAME/STAGE``, holding ``adapter/``): base + adapter in PyTorch fp32, eager;
* a plain checkpoint folder (``config.json``): PyTorch fp32, eager.

Both kinds answer the stage's question greedily and report per-image timings: preprocessing, vision
encoding, time to first token (image in → first token) and decode time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from factory.errors import SVLMError


@dataclass
class Answer:
    text: str
    tokens: int
    preprocess_s: float
    vision_s: float
    ttft_s: float
    decode_s: float

    @property
    def e2e_s(self) -> float:
        return self.ttft_s + self.decode_s

    @property
    def tokens_per_s(self) -> float:
        return (self.tokens - 1) / self.decode_s if self.decode_s > 0 and self.tokens > 1 else 0.0


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


class OnnxModel:
    kind = "onnx"

    def __init__(self, path: Path, threads: int | None = None):
        from export.runtime import Package

        self.path = Path(path)
        self.package = Package(path, threads=threads)
        m = self.package.manifest
        self.name = f"{m['source'].get('stage') or self.path.parent.name} onnx-{m['quantization']['name']}"
        self.style = m["source"].get("question_style", "cot")  # the question the package was exported with
        self.size_bytes = m["size_bytes"]

    def answer(self, image, max_new_tokens: int) -> Answer:
        g = self.package.generate(image, max_new_tokens=max_new_tokens)
        return Answer(g.text, len(g.token_ids) + (g.stopped == "eos"), g.preprocess_s, g.vision_s, g.ttft_s,
                      g.decode_s)


class TorchModel:
    kind = "pytorch"

    def __init__(self, path: Path, threads: int | None = None):
        import torch
        from peft import PeftModel

        from factory.models import load_model

        if threads:
            torch.set_num_threads(threads)
        self.path = Path(path)
        adapter = self.path / "adapter"
        self.style = "cot"
        if (adapter / "adapter_config.json").is_file():
            from factory.train.common import stage_source

            base, adapter, self.style = stage_source(self.path)
            loaded = load_model(base, dtype="float32", device="cpu")
            self.model = PeftModel.from_pretrained(loaded.model, str(adapter)).merge_and_unload().eval()
            self.name = f"{self.path.name} pytorch"
            self.size_bytes = dir_bytes(Path(base)) if Path(base).is_dir() else 0
            self.size_bytes += dir_bytes(adapter)
        else:
            loaded = load_model(self.path, dtype="float32", device="cpu")
            self.model = loaded.model.eval()
            self.name = f"{self.path.name} pytorch"
            self.size_bytes = dir_bytes(self.path)
        self.processor = loaded.processor
        self.family = loaded.family
        from factory.prompts import render_prompt

        self.prompt = render_prompt(self.processor, self.style)

    def answer(self, image, max_new_tokens: int) -> Answer:
        import torch
        from PIL import Image
        from transformers.generation.streamers import BaseStreamer

        class FirstToken(BaseStreamer):
            def __init__(self):
                self.calls, self.first = 0, None

            def put(self, value):
                self.calls += 1
                if self.calls == 2 and self.first is None:  # call 1 is the prompt, call 2 the first new token
                    self.first = time.perf_counter()

            def end(self):
                pass

        t0 = time.perf_counter()
        img = image if isinstance(image, Image.Image) else Image.open(image).convert("RGB")
        inputs = self.processor(images=[[img]], text=[self.prompt], return_tensors="pt")
        t1 = time.perf_counter()
        with torch.no_grad():
            pv = inputs["pixel_values"]
            self.family.onnx.image_features(self.model, pv.reshape(-1, *pv.shape[-3:]))
            t2 = time.perf_counter()
            streamer = FirstToken()
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=streamer)
        end = time.perf_counter()
        new = out[0, inputs["input_ids"].shape[1]:]
        text = self.processor.tokenizer.decode(new, skip_special_tokens=True)
        first = streamer.first or end
        # generate re-encodes the image itself; the separate vision timing is not part of ttft
        return Answer(text, int(new.numel()), t1 - t0, t2 - t1, (t1 - t0) + (first - t2), end - first)


def load(spec: str | Path, threads: int | None = None):
    """An OnnxModel or TorchModel for a path (see the module docstring)."""
    path = Path(spec)
    if (path / "manifest.json").is_file():
        return OnnxModel(path, threads)
    if (path / "adapter" / "adapter_config.json").is_file() or (path / "config.json").is_file():
        return TorchModel(path, threads)
    raise SVLMError(f"{spec} is neither an ONNX package (manifest.json), a stage output (adapter/) nor a "
                    "checkpoint (config.json)")
