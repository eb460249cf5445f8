"""An ONNX Runtime GenAI package (``svlm export --layout genai``) behind the runtime's model interface, so that
``svlm bench latency`` / ``svlm bench accuracy`` time and score it beside the svlm and GGUF packages and
``svlm demo`` serves it with its probability chart.

GenAI (``onnxruntime-genai``, an optional dependency: ``pip install onnxruntime-genai==0.18.0``) preprocesses the
image, runs the vision and embedding graphs and decodes by itself; this wrapper times it, parses the answer and
scores every label after it as the svlm runtime does (``svlm_runtime.label_scoring``), with GenAI's own generator:
``rewind_to`` cuts the generator's KV cache back to the shared context, ``append_tokens`` runs the context's last
token and a label's tokens in one decoder call, and ``get_output("logits")`` hands out that call's logits at every
appended position (``get_logits`` gives only the last). The same calls exist in GenAI's C, C#, Java and
Objective-C APIs (``OgaGenerator_RewindTo``, ``_AppendTokens``, ``_GetOutput``), so an app can score labels the
same way. No torch, no transformers.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from svlm_runtime.answer_format import AnswerFormat
from svlm_runtime.package import Generation, PackageError, check_files, is_layout, load_manifest

MANIFEST = "svlm_manifest.json"
LAYOUT = "genai"


def is_genai_package(path: str | Path) -> bool:
    """Whether ``path`` holds a GenAI package's manifest (cheap: reads one JSON file)."""
    return is_layout(path, LAYOUT, MANIFEST)


def read_genai_manifest(path: str | Path, verify: bool = True) -> dict:
    """The manifest, checked as every layout's is (``package.check_files``): every listed file a bare name,
    present with its size and (``verify``) its sha256, and an answer format this runtime applies."""
    root = Path(path)
    mf, manifest = load_manifest(root, MANIFEST)
    if manifest.get("layout") != LAYOUT:
        raise PackageError(f"{root} is not a GenAI package ({MANIFEST} with layout {LAYOUT!r} is missing)")
    if not isinstance(manifest.get("files"), dict):
        raise PackageError(f"{mf} lacks files")
    check_files(root, mf, manifest, verify)
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
        # Room past the generation for scoring the labels, in the generator's max_length (its KV cache is sized
        # to it): each label's closed answer after the forced tags, twice over for re-tokenized reasoning. A
        # plan that needs more still scores, in a second generator (``_score_labels``).
        close = self.answer_format.think[1] + self.answer_format.answer[0]
        self.room = 2 * max(len(self.encode(close + lab + self.answer_format.answer[1])) for lab in self.labels) + 16

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

    def encode(self, text: str) -> list[int]:
        """Text -> token ids, no special tokens added (GenAI's tokenizer, from the package's tokenizer.json)."""
        return self.tokenizer.encode(text).tolist()

    def decode(self, ids) -> str:
        """Token ids -> text, special tokens skipped."""
        import numpy as np

        return self.tokenizer.decode(np.asarray(list(ids), np.int32))

    def _generator(self, inputs, max_length: int, search: dict | None = None):
        """A generator that has run the prompt (``inputs``: the processor's, image included)."""
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=max_length, **(search or {"do_sample": False}))
        gen = self.og.Generator(self.model, params)
        gen.set_inputs(inputs)
        return gen

    def generate(self, image, *, max_new_tokens: int = 160, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, on_text=None, label_probs: bool = True) -> Generation:
        """Greedy (or sampled) generation for one image, then (``label_probs``) every label's probability after
        the answer. ``vision_s`` is 0: GenAI runs the vision graph inside the prompt's run, which ``ttft_s``
        covers."""
        t0 = time.perf_counter()
        inputs = self.processor(self.prompt, images=self._images(image))
        t_pre = time.perf_counter()
        n = int(inputs["input_ids"].as_numpy().shape[-1])
        search = {"do_sample": temperature > 0}
        if temperature > 0:
            search.update(temperature=temperature, top_p=top_p, top_k=0)
            if seed is not None:
                search["random_seed"] = seed
        max_length = n + max_new_tokens + (self.room if label_probs else 0)
        gen = self._generator(inputs, max_length, search)
        ids, first, stopped, sent = [], None, "length", 0
        eos = set(self.tokenizer.eos_token_ids)
        while len(ids) < max_new_tokens and not gen.is_done():
            gen.generate_next_token()
            first = first or time.perf_counter()
            token = int(gen.get_next_tokens()[0])
            if token in eos:
                stopped = "eos"
                break
            ids.append(token)
            if on_text is not None:  # as Package streams: up to the last whole character, so what was sent stays
                text = self.decode(ids)
                ready = len(text.rstrip("\ufffd"))
                if ready > sent:
                    on_text(text[sent:ready])
                    sent = ready
        end = time.perf_counter()
        first = first or end
        text = self.decode(ids)
        if on_text is not None and len(text) > sent:
            on_text(text[sent:])
        parsed = self.answer_format.parse(text)
        t_label = time.perf_counter()
        probs, forced = ({}, False)
        if label_probs:
            # GenAI runs a sampled token through the decoder when the next one is asked for: the cache holds
            # every generated token but the last, unless the last was followed by an end token
            fed = len(ids) if stopped == "eos" else max(len(ids) - 1, 0)
            probs, forced = self._score_labels(gen, max_length, inputs, n, ids, fed)
        return Generation(text=text, token_ids=ids, label=parsed.label, well_formed=parsed.well_formed,
                          ttft_s=first - t0, decode_s=end - first, preprocess_s=t_pre - t0, stopped=stopped,
                          label_probs=probs, label_probs_forced=forced, label_s=time.perf_counter() - t_label)

    def _score_labels(self, gen, max_length: int, inputs, n: int, ids: list[int],
                      fed: int) -> tuple[dict[str, float], bool]:
        """Per-label probabilities after the generated ``ids`` (``label_scoring``), and whether they were forced.
        ``gen`` (made with ``max_length``) has run the ``n``-token prompt of ``inputs`` and the first ``fed`` of
        ``ids``; its cache is cut back to the context the labels share and each label runs after it."""
        import numpy as np

        from svlm_runtime.label_scoring import label_probabilities, plan_label_scoring

        plan = plan_label_scoring(ids, self.encode, self.decode, self.labels, self.style, self.answer_format)
        after = [*ids[:plan.kept], *plan.bridge]  # the context after the prompt
        need = n + len(after) + max(map(len, plan.labels.values()))
        if need > max_length:  # more than the room left (re-tokenized reasoning): run the prompt again, longer
            gen, fed = self._generator(inputs, need), 0
        # Keep what the cache holds of the context, but run at least its last token (or, with no context after
        # the prompt, the prompt's last): its logits score each label's first token.
        cut = min(plan.kept, fed, len(after) - 1)
        context = after[cut:] if cut >= 0 else [int(inputs["input_ids"].as_numpy().reshape(-1)[-1]), *after]
        gen.rewind_to(n + cut)
        if len(context) > 1:  # what every label shares, run once
            gen.append_tokens(np.asarray(context[:-1], np.int32))
        at = n + cut + len(context) - 1
        sums = {}
        for label, target in plan.labels.items():
            gen.rewind_to(at)
            gen.append_tokens(np.asarray([context[-1], *target[:-1]], np.int32))
            z = np.asarray(gen.get_output("logits"), np.float64).reshape(len(target), -1)
            z = z - z.max(-1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
            sums[label] = float(logp[np.arange(len(target)), target].sum())
        return label_probabilities(sums), plan.forced

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
