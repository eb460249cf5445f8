"""Run a GGUF package (``svlm export --layout gguf``) with llama.cpp's own multimodal runtime, through the
``llama-cpp-python`` bindings (``llama_cpp`` and ``llama_cpp.mtmd_cpp``): no torch, no onnxruntime.

    from svlm_runtime.gguf import GGUFModel
    model = GGUFModel("runs/default/export-gguf/q4_k_m")
    result = model.generate("photo.jpg", on_text=print)   # the same Generation as Package.generate

A GGUF package holds the text model (``model.gguf``, f16 / q8_0 / Q4_K_M), the vision encoder and projector
(``mmproj.gguf``, f16), a ``manifest.json`` and a model card; the same two files run in ``llama-mtmd-cli``,
Ollama and LM Studio. The manifest stores the question as text around the image (``prompt.before`` /
``prompt.after``, the chat template already applied at export), the image-token bounds that reproduce the
project's image policy in llama.cpp (``image.min_tokens`` / ``image.max_tokens``) and the resize that the
family's processor does before its encoder (``image.resize``), done here with Pillow so that llama.cpp's own
resize is a no-op and the image tokens equal the processor's (the export checks both).

Optional dependency: ``pip install llama-cpp-python`` (``svlm-runtime[gguf]``).
"""

from __future__ import annotations

import ctypes
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from svlm_runtime.answer_format import AnswerFormat
from svlm_runtime.package import Generation, PackageError, _file_name, check_files, is_layout, load_manifest

LAYOUT = "gguf"
FORMAT_VERSION = 1
REQUIRED = ("layout", "format_version", "model", "mmproj", "files", "prompt", "image", "tokens", "labels",
            "quantization")


def is_gguf_package(path: str | Path) -> bool:
    """Whether ``path`` holds a GGUF package's manifest (cheap: reads one JSON file)."""
    return is_layout(path, LAYOUT)


def read_gguf_manifest(path: str | Path, verify: bool = True) -> dict:
    """The manifest of a GGUF package, checked like ``read_manifest`` checks an ONNX one: the two GGUF files
    and every listed file present with its size and (``verify``) its sha256; anything else one ``PackageError``."""
    root = Path(path)
    mf, manifest = load_manifest(root)
    if manifest.get("layout") != LAYOUT:
        raise PackageError(f"{mf} is not a GGUF package manifest (layout {LAYOUT!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise PackageError(f"{mf}: GGUF format_version {manifest.get('format_version')!r}, this runtime reads "
                           f"{FORMAT_VERSION}")
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise PackageError(f"{mf} lacks {', '.join(missing)}")
    files = manifest["files"]
    for key in ("model", "mmproj"):
        name = _file_name(manifest[key], key, mf)
        if not isinstance(files, dict) or name not in files:
            raise PackageError(f"{mf}: {name} not listed in files (unverified content)")
    check_files(root, mf, manifest, verify)
    return manifest


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's resize rule (transformers' ``smart_resize``): both sides multiples of ``factor``, the area
    within [min_pixels, max_pixels], the aspect ratio kept as closely as that allows.

    >>> smart_resize(96, 96, 28, 3136, 200704), smart_resize(1000, 500, 28, 3136, 200704)
    ((84, 84), (616, 308))
    """
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio above 200: {height}x{width}")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def resize_for(image, spec: dict):
    """The image at the size the family's processor gives its encoder (``spec``: the manifest's
    ``image.resize``), resampled as the processor does; llama.cpp then has nothing left to resize."""
    from PIL import Image

    if spec["kind"] == "fixed":
        size = (spec["width"], spec["height"])
    elif spec["kind"] == "smart_resize":
        h, w = smart_resize(image.height, image.width, spec["factor"], spec["min_pixels"], spec["max_pixels"])
        size = (w, h)
    else:
        raise PackageError(f"unknown image resize {spec['kind']!r} in the manifest")
    return image if image.size == size else image.resize(size, Image.Resampling(spec["resample"]))


def _rgb(image):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as img:
        return img.convert("RGB")


_quiet = None  # the one no-op log callback (ctypes must keep it alive)


def _silence(llama_cpp, mtmd) -> None:
    """llama.cpp logs every tensor and kernel to stderr; keep a library's output clean."""
    global _quiet
    if _quiet is None:
        _quiet = llama_cpp.llama_log_callback(lambda level, text, user: None)
        llama_cpp.llama_log_set(_quiet, ctypes.c_void_p())
        mtmd.mtmd_helper_log_set(_quiet, ctypes.c_void_p())


class GGUFModel:
    """A GGUF package behind the runtime's model interface (``generate``, ``generate_batch``, ``name``,
    ``kind``, ``style``, ``size_bytes``), decoded by llama.cpp one image at a time (one sequence)."""

    kind = "gguf"

    def __init__(self, path: str | Path, threads: int | None = None, verify: bool = True, n_ctx: int = 4096):
        try:
            import llama_cpp
            from llama_cpp import mtmd_cpp as mtmd
        except ImportError:
            raise PackageError("a GGUF package runs with llama-cpp-python: pip install llama-cpp-python "
                               "(or svlm-runtime[gguf])") from None
        self.root = Path(path)
        self.manifest = read_gguf_manifest(self.root, verify=verify)
        self._ll, self._mtmd = llama_cpp, mtmd
        _silence(llama_cpp, mtmd)
        llama_cpp.llama_backend_init()
        import os

        if not threads:
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.threads = threads
        mp = llama_cpp.llama_model_default_params()
        mp.n_gpu_layers = 0
        self._model = llama_cpp.llama_model_load_from_file(str(self.root / self.manifest["model"]).encode(), mp)
        if not self._model:
            raise PackageError(f"{self.root}: llama.cpp cannot load {self.manifest['model']}")
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch = n_ctx, 512, 512
        cp.n_threads = cp.n_threads_batch = threads
        self._ctx = llama_cpp.llama_init_from_model(self._model, cp)
        if not self._ctx:
            raise PackageError(f"{self.root}: llama.cpp cannot make a context for {self.manifest['model']}")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        img = self.manifest["image"]
        p = mtmd.mtmd_context_params_default()
        p.use_gpu, p.n_threads, p.print_timings, p.warmup = False, threads, False, False
        # the project's image policy as llama.cpp's image-token budget (its default allows up to 4096)
        p.image_min_tokens, p.image_max_tokens = img.get("min_tokens", -1), img.get("max_tokens", -1)
        self._mctx = mtmd.mtmd_init_from_file(str(self.root / self.manifest["mmproj"]).encode(), self._model, p)
        if not self._mctx:
            raise PackageError(f"{self.root}: llama.cpp cannot load {self.manifest['mmproj']}")
        self._batch = llama_cpp.llama_batch_init(512, 0, 1)
        self._last_prompt_token = None
        self._lock = threading.Lock()  # one context, one sequence: one generation at a time
        self.eos_ids = set(self.manifest["tokens"]["eos_token_ids"])
        self.labels = self.manifest["labels"]
        self.answer_format = AnswerFormat.from_manifest(self.manifest)
        self.style = self.manifest["source"].get("question_style", "cot")

    def close(self) -> None:
        """Free llama.cpp's model, context and projector now (else when the object is collected)."""
        ll = getattr(self, "_ll", None)
        if ll is None:
            return
        self._ll = None
        if getattr(self, "_batch", None) is not None:
            ll.llama_batch_free(self._batch)
        if getattr(self, "_mctx", None):
            self._mtmd.mtmd_free(self._mctx)
        if getattr(self, "_ctx", None):
            ll.llama_free(self._ctx)
        if getattr(self, "_model", None):
            ll.llama_model_free(self._model)

    def __del__(self):
        try:
            self.close()
        except Exception:  # at interpreter exit the bindings may be gone already
            pass

    @property
    def size_bytes(self) -> int:
        return self.manifest["size_bytes"]

    @property
    def name(self) -> str:
        return f"{self.manifest['source'].get('stage') or 'model'} gguf-{self.manifest['quantization']['name']}"

    # --- tokens ----------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        data = text.encode("utf-8")
        buf = (self._ll.llama_token * (len(data) + 8))()
        n = self._ll.llama_tokenize(self._vocab, data, len(data), buf, len(buf), False, False)
        return list(buf[:n])

    def decode(self, ids) -> str:
        """Text of ``ids`` without special tokens (bytes joined before decoding, so split characters mend)."""
        out = b""
        buf = ctypes.create_string_buffer(256)
        for t in ids:
            n = self._ll.llama_token_to_piece(self._vocab, int(t), buf, len(buf), 0, False)
            out += buf.raw[:n] if n > 0 else b""
        return out.decode("utf-8", errors="replace")

    # --- llama.cpp calls -------------------------------------------------------------------------------
    def _feed(self, tokens: list[int], pos: int, logits: str = "last") -> np.ndarray:
        """Decode ``tokens`` at positions ``pos``…; the logits of the last one (``"last"``) or of each (``"all"``)."""
        ll, b = self._ll, self._batch
        rows = []
        for start in range(0, len(tokens), 512):
            part = tokens[start:start + 512]
            b.n_tokens = len(part)
            for i, t in enumerate(part):
                b.token[i], b.pos[i], b.n_seq_id[i] = t, pos + start + i, 1
                b.seq_id[i][0] = 0
                b.logits[i] = logits == "all" or start + i == len(tokens) - 1
            if ll.llama_decode(self._ctx, b) != 0:
                raise PackageError(f"{self.root}: llama_decode failed (context of {ll.llama_n_ctx(self._ctx)} tokens "
                                   "exceeded?)")
            for i in range(len(part)):
                if b.logits[i]:
                    rows.append(np.ctypeslib.as_array(ll.llama_get_logits_ith(self._ctx, i),
                                                      shape=(self.n_vocab,)).copy())
        return np.stack(rows)

    def prompt_chunks(self, image):
        """The question around ``image`` (already resized) as llama.cpp tokenizes it: a list of
        ``("text", ids)`` / ``("image", n_tokens)`` and the chunks' handle (free with ``mtmd_input_chunks_free``)."""
        mtmd, prompt = self._mtmd, self.manifest["prompt"]
        data = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
        bitmap = mtmd.mtmd_bitmap_init(image.width, image.height, data.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)))
        texts = [mtmd.mtmd_input_text(t.encode("utf-8"), len(t.encode("utf-8")), False, True)
                 for t in (prompt["before"], prompt["after"])]
        parts = [mtmd.mtmd_input_part(ctypes.pointer(texts[0]), None), mtmd.mtmd_input_part(None, bitmap),
                 mtmd.mtmd_input_part(ctypes.pointer(texts[1]), None)]
        arr = (ctypes.POINTER(mtmd.mtmd_input_part) * 3)(*[ctypes.pointer(p) for p in parts])
        chunks = mtmd.mtmd_input_chunks_init()
        try:
            if mtmd.mtmd_tokenize_from_parts(self._mctx, chunks, arr, 3, False) != 0:
                raise PackageError(f"{self.root}: llama.cpp could not tokenize the prompt with the image")
        finally:
            mtmd.mtmd_bitmap_free(bitmap)
        out = []
        for i in range(mtmd.mtmd_input_chunks_size(chunks)):
            c = mtmd.mtmd_input_chunks_get(chunks, i)
            if mtmd.mtmd_input_chunk_get_type(c) == mtmd.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                ptr = mtmd.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(n))
                out.append(("text", [int(ptr[j]) for j in range(n.value)]))
            else:
                out.append(("image", int(mtmd.mtmd_input_chunk_get_n_tokens(c))))
        return out, chunks

    def _prefill(self, image) -> tuple[np.ndarray, int, float]:
        """Clear the cache and run the prompt with ``image``: (last logits, next position, vision seconds)."""
        ll, mtmd = self._ll, self._mtmd
        ll.llama_memory_clear(ll.llama_get_memory(self._ctx), True)
        parts, chunks = self.prompt_chunks(image)
        pos, vision_s, logits = 0, 0.0, None
        try:
            for i, (kind, value) in enumerate(parts):
                c = mtmd.mtmd_input_chunks_get(chunks, i)
                last = i == len(parts) - 1
                if kind == "text":
                    logits = self._feed(value, pos) if value else logits
                    self._last_prompt_token = value[-1] if value else self._last_prompt_token
                    pos += len(value)
                    continue
                t = time.perf_counter()
                if mtmd.mtmd_encode_chunk(self._mctx, c) != 0:
                    raise PackageError(f"{self.root}: llama.cpp could not encode the image")
                vision_s += time.perf_counter() - t
                new = ll.llama_pos(0)
                # the image embeddings go through the decoder at the chunk's positions (M-RoPE: 2-D ones)
                rc = mtmd.mtmd_helper_decode_image_chunk(self._mctx, self._ctx, c, mtmd.mtmd_get_output_embd(self._mctx),
                                                         pos, 0, 512, ctypes.byref(new),
                                                         mtmd.mtmd_helper_post_decode_callback(), None)
                if rc != 0:
                    raise PackageError(f"{self.root}: llama.cpp could not decode the image embeddings")
                pos = new.value
                if last:
                    logits = np.ctypeslib.as_array(ll.llama_get_logits_ith(self._ctx, -1), shape=(self.n_vocab,))[None]
        finally:
            mtmd.mtmd_input_chunks_free(chunks)
        return logits[-1].copy(), pos, vision_s

    # --- the model interface ---------------------------------------------------------------------------
    def prefill_logits(self, image) -> np.ndarray:
        """Logits at the last prompt position for ``image`` (the export compares them with PyTorch's)."""
        with self._lock:
            return self._prefill(resize_for(_rgb(image), self.manifest["image"]["resize"]))[0]

    def generate(self, image, *, max_new_tokens: int = 160, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, on_text: Callable[[str], None] | None = None,
                 label_probs: bool = True) -> Generation:
        """Greedy (temperature 0) or sampled generation for one image, as ``Package.generate``; ``vision_s`` is
        llama.cpp's image encoding, inside ``ttft_s``."""
        from svlm_runtime.package import Package

        rng = np.random.default_rng(seed)
        with self._lock:
            t0 = time.perf_counter()
            img = resize_for(_rgb(image), self.manifest["image"]["resize"])
            t1 = time.perf_counter()
            logits, pos, vision_s = self._prefill(img)
            ids, stopped, sent, first, fed = [], "length", 0, None, 0
            for _ in range(max_new_tokens):
                token = Package._pick(logits.astype(np.float64), temperature, top_p, rng)
                first = first or time.perf_counter()
                if token in self.eos_ids:
                    stopped = "eos"
                    break
                ids.append(token)
                if on_text is not None:
                    text = self.decode(ids)
                    ready = len(text.rstrip("\ufffd"))  # a character split over tokens: wait for its last byte
                    if ready > sent:
                        on_text(text[sent:ready])
                        sent = ready
                if len(ids) == max_new_tokens:
                    break
                logits = self._feed([token], pos)[-1]
                pos, fed = pos + 1, fed + 1
            end = time.perf_counter()
            first = first or end
            text = self.decode(ids)
            if on_text is not None and len(text) > sent:
                on_text(text[sent:])
            parsed = self.answer_format.parse(text)
            t_label = time.perf_counter()
            probs, forced = self._score_labels(ids, fed, pos) if label_probs else ({}, False)
        return Generation(text=text, token_ids=ids, label=parsed.label, well_formed=parsed.well_formed,
                          ttft_s=first - t0, decode_s=end - first, preprocess_s=t1 - t0, vision_s=vision_s,
                          stopped=stopped, label_probs=probs, label_probs_forced=forced,
                          label_s=time.perf_counter() - t_label)

    def _score_labels(self, ids: list[int], fed: int, pos: int) -> tuple[dict[str, float], bool]:
        """Per-label probabilities after the generated ``ids`` (``label_scoring``): the cache is cut back to the
        kept context and each label is fed after it. The cache holds the prompt and the first ``fed`` of
        ``ids``; ``pos`` is the position after them."""
        from svlm_runtime.label_scoring import label_probabilities, plan_label_scoring

        ll = self._ll
        plan = plan_label_scoring(ids, self.encode, self.decode, self.labels, self.style, self.answer_format)
        base = pos - fed  # the position of the first generated token
        after = [*ids[:plan.kept], *plan.bridge]  # the context after the prompt
        # keep what the cache already holds of it, but feed at least one token: its logits score the label's first
        cut = min(plan.kept, fed, len(after) - 1)
        context = after[cut:] if cut >= 0 else [self._last_prompt_token, *after]
        mem = ll.llama_get_memory(self._ctx)
        sums = {}
        for label, target in plan.labels.items():
            ll.llama_memory_seq_rm(mem, 0, base + cut, -1)
            logits = self._feed([*context, *target], base + cut, logits="all")
            z = logits[len(context) - 1:len(context) - 1 + len(target)].astype(np.float64)
            z = z - z.max(-1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
            sums[label] = float(logp[np.arange(len(target)), target].sum())
        ll.llama_memory_seq_rm(mem, 0, base + cut, -1)
        return label_probabilities(sums), plan.forced

    def generate_batch(self, images, *, max_new_tokens: int = 160, batch_size: int = 8, temperature: float = 0.0,
                       top_p: float = 1.0, seed: int | None = None, label_probs: bool = True,
                       on_batch: Callable[[int], None] | None = None, workers: int | None = None) -> list[Generation]:
        """``generate`` for each image in turn (llama.cpp decodes one sequence here; ``batch_size`` only sets how
        often ``on_batch`` reports); image ``i`` samples from ``seed`` and ``i``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        results: list[Generation] = []
        for at in range(0, len(images), batch_size):
            for i, image in enumerate(images[at:at + batch_size]):
                results.append(self.generate(image, max_new_tokens=max_new_tokens, temperature=temperature,
                                             top_p=top_p, seed=None if seed is None else seed * 100003 + at + i,
                                             label_probs=label_probs))
            if on_batch is not None:
                on_batch(len(images[at:at + batch_size]))
        return results
