"""What a benchmark can measure: a PyTorch stage output or an ONNX package, behind one interface.

A model spec is a path:
* an ONNX package (a folder with ``manifest.json``, written by ``svlm export``);
* a stage output (``runs/NAME/STAGE``, holding ``adapter/``): base + adapter in PyTorch fp32, eager;
* a plain checkpoint folder (``config.json``): PyTorch fp32, eager.

Both kinds answer the stage's question greedily and report per-image timings: preprocessing, vision
encoding, time to first token (image in → first token) and decode time. Both score the answer's per-label
probabilities with the one plan of ``svlm_runtime.label_scoring`` (the runtime with its KV cache, ``TorchModel`` with a
batched forward pass).
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


def append_tokens(inputs, ids, mask):
    """Processor outputs with ``ids`` [batch, n] appended to every sequence (``mask`` [batch, n] for them in the
    attention mask). Other per-token outputs (Qwen2-VL's ``mm_token_type_ids``: M-RoPE reads it) get zeros:
    appended text is text."""
    import torch

    length = inputs["input_ids"].shape
    out = dict(inputs)
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.shape == length:
            extra = {"input_ids": ids, "attention_mask": mask.to(value.dtype)}.get(key, torch.zeros_like(ids))
            out[key] = torch.cat([value, extra.to(value.dtype)], 1)
    return out


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


class OnnxModel:
    kind = "onnx"

    def __init__(self, path: Path, threads: int | None = None, low_memory: bool = False):
        from svlm_runtime.package import Package

        self.path = Path(path)
        self.package = Package(path, threads=threads, low_memory=low_memory)
        m = self.package.manifest
        self.name = f"{m['source'].get('stage') or self.path.parent.name} onnx-{m['quantization']['name']}"
        self.style = m["source"].get("question_style", "cot")  # the question the package was exported with
        self.size_bytes = m["size_bytes"]

    def answer(self, image, max_new_tokens: int) -> Answer:
        g = self.package.generate(image, max_new_tokens=max_new_tokens, label_probs=False)
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

    def completion_ids(self, sequence, prompt_len: int) -> list[int]:
        """The generated ids of one ``generate`` row, up to (without) its first end-of-sequence token."""
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, (list, tuple)) else [eos])
        out = []
        for t in sequence[prompt_len:].tolist():
            if t in eos:
                break
            out.append(t)
        return out

    def label_probs(self, image, generated: list[int]) -> tuple[dict[str, float], bool]:
        """Per-label probabilities of the answer after ``generated`` (``label_scoring``) and whether they were
        forced, from one batched forward pass over the prompt, the kept context and each label's tokens."""
        import torch

        from svlm_runtime.label_scoring import label_probabilities, plan_label_scoring
        from factory.prompts import EMOTIONS

        tok = self.processor.tokenizer
        plan = plan_label_scoring(generated, lambda text: tok.encode(text, add_special_tokens=False),
                                  lambda ids: tok.decode(list(ids), skip_special_tokens=True), EMOTIONS, self.style)
        batch = len(plan.labels)
        inputs = self.processor(images=[[image]] * batch, text=[self.prompt] * batch, return_tensors="pt")
        context = [*generated[:plan.kept], *plan.bridge]
        rows = [context + ids for ids in plan.labels.values()]
        width = max(map(len, rows))
        ids = torch.full((batch, width), tok.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((batch, width), dtype=torch.long)
        for b, row in enumerate(rows):  # right padding: a padded tail cannot reach the real tokens
            ids[b, :len(row)] = torch.tensor(row)
            mask[b, :len(row)] = 1
        keep = width - len(context) + 1  # the logits from the last context token on
        with torch.no_grad():
            logits = self.model(**append_tokens(inputs, ids, mask), logits_to_keep=keep).logits.double()
        logp = torch.log_softmax(logits, -1)
        sums = {label: float(logp[b, torch.arange(len(target)), torch.tensor(target)].sum())
                for b, (label, target) in enumerate(plan.labels.items())}
        return label_probabilities(sums), plan.forced

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


def load(spec: str | Path, threads: int | None = None, low_memory: bool = False):
    """An OnnxModel or TorchModel for a path (see the module docstring); ``low_memory`` applies to packages."""
    path = Path(spec)
    if (path / "manifest.json").is_file():
        return OnnxModel(path, threads, low_memory)
    if (path / "adapter" / "adapter_config.json").is_file() or (path / "config.json").is_file():
        return TorchModel(path, threads)
    raise SVLMError(f"{spec} is neither an ONNX package (manifest.json), a stage output (adapter/) nor a "
                    "checkpoint (config.json)")
