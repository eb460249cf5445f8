"""One interface for every model the benchmarks and the demo run: an ONNX, GGUF or GenAI package or a PyTorch stage.

A model spec is a path:
* an ONNX package (a folder with ``manifest.json``, written by ``svlm export``): ``svlm_runtime.Package``;
* a GGUF package (``svlm export --layout gguf``): ``svlm_runtime.gguf.GGUFModel`` (llama.cpp);
* a GenAI package (``svlm export --layout genai``): ``svlm_runtime.genai.GenAIModel`` (ONNX Runtime GenAI);
* a stage output (``runs/NAME/STAGE``, holding ``adapter/``): base + adapter merged, PyTorch fp32, eager;
* a plain checkpoint folder (``config.json``): PyTorch fp32, eager.

Packages carry their task's labels and answer rule in the manifest; PyTorch stages and merged checkpoints in
their ``task.yaml`` (``factory.tasks``).

All answer the question the model was trained (or exported) with through the runtime's interface:
``generate(image, max_new_tokens=…, on_text=…, label_probs=…) -> Generation`` and
``generate_batch(images, batch_size=…, on_batch=…) -> list[Generation]``, plus ``name``, ``kind``
(``"onnx"`` / ``"pytorch"`` / …), ``style`` and ``size_bytes``. The svlm package and ``TorchModel`` score
per-label probabilities with the one plan of ``svlm_runtime.label_scoring`` (the package with its KV cache,
``TorchModel`` with one batched forward pass); the GGUF runner scores them on its own cut-back cache. Timings
mean the same in all: preprocessing, vision encoding, time to first token (image in → first
token) and decode time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from svlm_runtime.package import Generation

from factory.errors import SVLMError


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


class _Clock:
    """A generate streamer that notes when the first new token arrives (call 1 is the prompt) and, for a
    batch of one with ``on_text``, streams the text like transformers' ``TextStreamer``."""

    def __init__(self, tokenizer=None, on_text: Callable[[str], None] | None = None):
        from transformers import TextStreamer

        self.first: float | None = None
        self.calls = 0
        self.text = None
        if on_text is not None:
            self.text = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
            self.text.on_finalized_text = lambda text, stream_end=False: text and on_text(text)

    def put(self, value):
        self.calls += 1
        if self.calls == 2:
            self.first = time.perf_counter()
        if self.text is not None:
            self.text.put(value)

    def end(self):
        if self.text is not None:
            self.text.end()


class TorchModel:
    """A stage output or checkpoint in PyTorch (fp32, CPU unless told) behind the runtime's interface."""

    kind = "pytorch"

    def __init__(self, path: Path, threads: int | None = None):
        import torch
        from peft import PeftModel

        from factory.models import load_model
        from factory.tasks import folder_task

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
            self.size_bytes = (dir_bytes(Path(base)) if Path(base).is_dir() else 0) + dir_bytes(adapter)
        else:
            loaded = load_model(self.path, dtype="float32", device="cpu")
            self.model = loaded.model.eval()
            self.size_bytes = dir_bytes(self.path)
        self.name = f"{self.path.name} pytorch"
        self.processor = loaded.processor
        self.family = loaded.family
        self.task = folder_task(self.path)  # a stage's or merged checkpoint's task.yaml (older folders: EmoSet)
        self.labels = list(self.task.labels)
        self.answer_format = self.task.answer_format
        self.prompt = self.task.render_prompt(self.processor, self.style)
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {self.processor.tokenizer.eos_token_id}

    def completion_ids(self, sequence, prompt_len: int) -> list[int]:
        """The generated ids of one ``generate`` row, up to (without) its first end-of-sequence token."""
        out = []
        for t in sequence[prompt_len:].tolist():
            if t in self.eos_ids:
                break
            out.append(t)
        return out

    def label_probs(self, image, generated: list[int]) -> tuple[dict[str, float], bool]:
        """Per-label probabilities of the answer after ``generated`` (``label_scoring``) and whether they were
        forced, from one batched forward pass over the prompt, the kept context and each label's tokens."""
        import torch

        from svlm_runtime.label_scoring import label_probabilities, plan_label_scoring

        tok = self.processor.tokenizer
        plan = plan_label_scoring(generated, lambda text: tok.encode(text, add_special_tokens=False),
                                  lambda ids: tok.decode(list(ids), skip_special_tokens=True), self.labels,
                                  self.style, self.answer_format)
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

    def generate(self, image, *, max_new_tokens: int = 160, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, on_text: Callable[[str], None] | None = None,
                 label_probs: bool = True) -> Generation:
        """``Package.generate`` in PyTorch. Where the family's registry entry knows how to call the vision
        encoder alone, it runs once more on its own to time it (generate encodes the image itself), so
        ``vision_s`` is measured but not counted in ``ttft_s``; otherwise ``vision_s`` is 0."""
        import torch

        t0 = time.perf_counter()
        img = _rgb(image)
        inputs = self.processor(images=[[img]], text=[self.prompt], return_tensors="pt")
        t1 = time.perf_counter()
        encode = self.family.onnx.image_features
        if encode is not None:
            with torch.no_grad():
                pv = inputs["pixel_values"]
                encode(self.model, pv.reshape(-1, *pv.shape[-3:]))
        t2 = time.perf_counter()
        clock = _Clock(self.processor.tokenizer, on_text)
        new, stopped = self._run(inputs, max_new_tokens, temperature, top_p, seed, clock)[0]
        end = time.perf_counter()
        first = clock.first or end
        return self._generation(img, new, stopped, label_probs, ttft_s=(t1 - t0) + (first - t2),
                                decode_s=end - first, preprocess_s=t1 - t0, vision_s=t2 - t1)

    def generate_batch(self, images, *, max_new_tokens: int = 160, batch_size: int = 8, temperature: float = 0.0,
                       top_p: float = 1.0, seed: int | None = None, label_probs: bool = True,
                       on_batch: Callable[[int], None] | None = None) -> list[Generation]:
        """``Package.generate_batch`` in PyTorch: left-padded batches through ``generate``; each result carries
        its batch's timings (no separate vision timing)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        tok = self.processor.tokenizer
        tok.padding_side = "left"
        results = []
        for start in range(0, len(images), batch_size):
            t0 = time.perf_counter()
            chunk = [_rgb(image) for image in images[start:start + batch_size]]
            inputs = self.processor(images=[[img] for img in chunk], text=[self.prompt] * len(chunk),
                                    return_tensors="pt", padding=True)
            t1 = time.perf_counter()
            clock = _Clock()
            rows = self._run(inputs, max_new_tokens, temperature, top_p, seed, clock)
            end = time.perf_counter()
            first = clock.first or end
            results += [self._generation(img, new, stopped, label_probs, ttft_s=first - t0, decode_s=end - first,
                                         preprocess_s=t1 - t0) for img, (new, stopped) in zip(chunk, rows)]
            if on_batch is not None:
                on_batch(len(chunk))
        return results

    def _run(self, inputs, max_new_tokens: int, temperature: float, top_p: float, seed: int | None,
             streamer) -> list[tuple[list[int], str]]:
        """``model.generate`` on processor ``inputs``: per row its new ids (up to the first EOS) and why it
        stopped (``eos`` / ``length``)."""
        import torch

        sample = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else \
            {"do_sample": False}
        if seed is not None:
            torch.manual_seed(seed)
        device = next(self.model.parameters()).device
        with torch.no_grad():
            out = self.model.generate(**inputs.to(device), max_new_tokens=max_new_tokens, streamer=streamer,
                                      **sample)
        n = inputs["input_ids"].shape[1]
        rows = []
        for seq in out.cpu():
            new = self.completion_ids(seq, n)
            rows.append((new, "eos" if len(new) < len(seq) - n else "length"))
        return rows

    def _generation(self, image, ids: list[int], stopped: str, label_probs: bool, **timings) -> Generation:
        text = self.processor.tokenizer.decode(ids, skip_special_tokens=True)
        parsed = self.answer_format.parse(text)
        t = time.perf_counter()
        probs, forced = self.label_probs(image, ids) if label_probs else ({}, False)
        return Generation(text=text, token_ids=ids, label=parsed.label, well_formed=parsed.well_formed,
                          stopped=stopped, label_probs=probs, label_probs_forced=forced,
                          label_s=time.perf_counter() - t, **timings)


def _rgb(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as img:
        return img.convert("RGB")


def open_model(spec: str | Path, threads: int | None = None, low_memory: bool = False, workers: int = 1):
    """A ``Package``, ``GGUFModel``, ``GenAIModel`` or ``TorchModel`` for a path (see the module docstring).
    ``low_memory`` and ``workers`` (batches ``generate_batch`` runs at once, 0: one per core) apply to svlm
    packages: PyTorch spreads each operation over the cores itself, and the other runtimes decode one image at
    a time."""
    path = Path(spec)
    from svlm_runtime.gguf import is_gguf_package

    if is_gguf_package(path):  # llama.cpp through llama-cpp-python: one sequence, so ``workers`` does not apply
        from svlm_runtime.gguf import GGUFModel

        return GGUFModel(path, threads=threads)
    from svlm_runtime.genai import is_genai_package

    if is_genai_package(path):  # ONNX Runtime GenAI (svlm export --layout genai): one image at a time
        from svlm_runtime.genai import GenAIModel

        return GenAIModel(path, threads=threads)
    if (path / "manifest.json").is_file():
        from svlm_runtime.package import Package

        return Package(path, threads=threads, low_memory=low_memory, workers=workers)
    if (path / "adapter" / "adapter_config.json").is_file() or (path / "config.json").is_file():
        return TorchModel(path, threads)
    raise SVLMError(f"{spec} is neither a package (svlm ONNX, GGUF or ONNX Runtime GenAI), a stage output "
                    "(adapter/) nor a checkpoint (config.json)")
