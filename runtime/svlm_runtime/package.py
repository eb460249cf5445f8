"""Run an exported package: image → ``<think>…</think><answer>…</answer>`` with numpy, onnxruntime,
tokenizers and Pillow only (no torch, no transformers; a test enforces it).

    from svlm_runtime import Package
    pkg = Package("runs/default/export/int8")
    result = pkg.generate("photo.jpg", on_text=print)      # streams text deltas
    result.label, result.text, result.ttft_s, result.tokens_per_s
    result.label_probs, result.label_probs_forced          # per-label probabilities of the answer

The prompt is the package's stored token ids (the question with the image placeholders already expanded by
the family's processor at export), so the runtime needs no chat-template engine (Qwen's image token count
follows the image size: the stored prompt's image run is re-expanded per image, and the decoder's M-RoPE
positions are computed from the image grid, ``Package._prompt``). Image features replace the
embeddings of the image placeholder tokens, then one decoder graph runs prefill (past length 0) and each
decode step with its KV cache. After generation every label is scored as a whole token sequence after the
model's ``<answer>`` (``svlm_runtime.label_scoring``): the cache is cut back to the shared context and the
labels' continuations run as one batch. The answer's tags, labels and parsing rule are the manifest's
(``svlm_runtime.answer_format``; packages without an ``answer`` section use the default tags and rule).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from svlm_runtime.answer_format import AnswerFormat
from svlm_runtime.preprocess import preprocess

MANIFEST = "manifest.json"
FORMAT_VERSION = 2  # 2: every file listed with its sha256 (1: sizes only; still read)
READS = (1, 2)
REQUIRED = ("format_version", "graphs", "tokenizer", "files", "text", "image", "tokens", "prompt", "labels",
            "quantization")
GRAPHS = ("vision", "embed", "decoder")


class PackageError(Exception):
    """A package that is missing, incomplete, damaged or tampered with (the CLIs print it as one line)."""


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    label: str | None
    well_formed: bool
    ttft_s: float  # image in → first token (preprocess + vision + prefill)
    decode_s: float
    preprocess_s: float = 0.0
    vision_s: float = 0.0
    stopped: str = "eos"  # eos | length
    label_probs: dict[str, float] = field(default_factory=dict)  # every label, summing to 1
    label_probs_forced: bool = False  # no valid answer: scored after the reasoning + "</think><answer>"
    label_s: float = 0.0  # time spent scoring the labels (after decoding; not in ttft or decode)

    @property
    def tokens(self) -> int:
        """Tokens the model produced, its end-of-sequence token included."""
        return len(self.token_ids) + (self.stopped == "eos")

    @property
    def tokens_per_s(self) -> float:
        """Decode speed: the tokens after the first (which ``ttft_s`` covers) per second of ``decode_s``."""
        n = max(self.tokens - 1, 0)
        return n / self.decode_s if self.decode_s > 0 else 0.0


def sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _file_name(value, where: str, mf: Path) -> str:
    """A bare file name inside the package: no directories, no absolute path, no '..'."""
    if not isinstance(value, str) or not value or value in (".", "..") or "/" in value or "\\" in value \
            or Path(value).is_absolute() or Path(value).name != value:
        raise PackageError(f"{mf}: {where} {value!r} is not a file name inside the package")
    return value


def read_manifest(path: str | Path, verify: bool = True) -> dict:
    """The manifest of a package, checked: paths confined to the package, every graph and the tokenizer
    listed, each listed file present with its size and (``verify``, the default) its sha256. Anything else is
    one clear ``PackageError``. ``verify=False`` skips hashing (a few seconds for a 1 GB package)."""
    root = Path(path)
    if not root.is_dir():
        raise PackageError(f"no package at {root}")
    mf, manifest = load_manifest(root)
    if manifest.get("layout") == "gguf":
        raise PackageError(f"{root} is a GGUF package: run it with llama.cpp or svlm_runtime.gguf.GGUFModel")
    if manifest.get("format_version") not in READS:
        raise PackageError(f"{mf}: format_version {manifest.get('format_version')!r}, this runtime reads "
                           f"{', '.join(map(str, READS))}")
    missing = [key for key in REQUIRED if key not in manifest]
    if missing:
        raise PackageError(f"{mf} lacks {', '.join(missing)}")
    graphs = manifest["graphs"]
    if not isinstance(graphs, dict) or any(g not in graphs for g in GRAPHS):
        raise PackageError(f"{mf}: graphs must name {', '.join(GRAPHS)}")
    files = manifest["files"]
    if not isinstance(files, dict):
        raise PackageError(f"{mf}: files must map file names to their size and sha256")
    needed = {_file_name(graphs[g], f"graph {g}", mf) for g in GRAPHS}
    needed.add(_file_name(manifest["tokenizer"], "tokenizer", mf))
    unlisted = sorted(needed - set(files))
    if unlisted:
        raise PackageError(f"{mf}: {', '.join(unlisted)} not listed in files (unverified content)")
    check_files(root, mf, manifest, verify, hashed=manifest["format_version"] >= 2)
    return manifest


def is_layout(path: str | Path, layout: str, name: str = MANIFEST) -> bool:
    """Whether ``path`` holds a manifest ``name`` of ``layout`` (cheap: reads one JSON file); how the package
    loaders tell GGUF and GenAI folders from this runtime's own."""
    mf = Path(path) / name
    try:
        return mf.is_file() and json.loads(mf.read_text()).get("layout") == layout
    except (OSError, ValueError, AttributeError):
        return False


def load_manifest(root: Path, name: str = MANIFEST) -> tuple[Path, dict]:
    """``(path, parsed JSON object)`` of a package folder's manifest ``name``, whatever its layout; unchecked
    beyond being a readable JSON object (each layout's reader checks the rest)."""
    mf = root / name
    if not mf.is_file():
        raise PackageError(f"{root} is not a package: {name} is missing")
    try:
        manifest = json.loads(mf.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{mf} is corrupted: {exc}") from None
    if not isinstance(manifest, dict):
        raise PackageError(f"{mf} is corrupted: not a JSON object")
    return mf, manifest


def check_files(root: Path, mf: Path, manifest: dict, verify: bool, hashed: bool = True) -> None:
    """What every package layout's loader checks (this runtime's and ``svlm_runtime.gguf``'s): each file in
    ``manifest["files"]`` is a bare name present with the listed size (and a sha256 when ``hashed``), the
    answer format is one this runtime applies, and with ``verify`` every file matches its sha256."""
    files = manifest["files"]
    for name, info in files.items():
        f = root / _file_name(name, "file", mf)
        if not isinstance(info, dict) or not isinstance(info.get("bytes"), int) or \
                (hashed and not isinstance(info.get("sha256"), str)):
            raise PackageError(f"{mf}: files[{name!r}] needs bytes{' and sha256' if hashed else ''}")
        if not f.is_file():
            raise PackageError(f"{root} is incomplete: {name} is missing")
        if f.stat().st_size != info["bytes"]:
            raise PackageError(f"{root}: {name} has {f.stat().st_size} bytes, the manifest says {info['bytes']} "
                               "(truncated or replaced)")
    try:
        AnswerFormat.from_manifest(manifest)
    except ValueError as exc:
        raise PackageError(f"{mf}: {exc}") from None
    if verify and hashed:
        for name, info in files.items():
            if sha256(root / name) != info["sha256"]:
                raise PackageError(f"{root}: {name} does not match its sha256 in the manifest (damaged or altered)")


def _mmap_large_allocations(threshold: int = 64 * 1024) -> bool:
    """Ask glibc to serve allocations of ``threshold`` bytes and more with mmap (``mallopt(M_MMAP_THRESHOLD)``),
    so freed intermediates leave the process at once; False where there is no glibc (then nothing changes)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_mmap_threshold = -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, threshold))


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Package:
    """A loaded package: three onnxruntime sessions, the tokenizer and the manifest."""

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None,
                 verify: bool = True, low_memory: bool = False, workers: int = 1):
        """``workers``: how many batches ``generate_batch`` runs at once (0: one per core), on threads sharing
        these sessions; with more than one, each session gets ``threads`` or (by default) its share of the CPU cores, so that
        the workers do not wait on one thread pool. Default model, 2 cores: one image at a time 112 ms/image
        with a 2-thread pool, 41 ms with 2 workers of 1 thread each.
        ``low_memory``: no onnxruntime memory arena and no memory-pattern plan, so each intermediate is
        freed after use instead of held in peak-sized blocks, and (glibc, process-wide) allocations of 64 KiB
        and more are mmapped, so what is freed goes back to the system instead of fragmenting the heap.
        InternVL3-1B shape, int4, 2 threads, 10 generations: peak RSS 1443 -> 1156 MiB for about 1.1 s more
        to the first token (arena off alone: 1516 MiB, the heap keeps what was freed)."""
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if workers < 0:
            raise ValueError(f"workers must be 0 (one per core) or more, got {workers}")
        workers = workers or _cores()
        self.root = Path(path)
        self.manifest = read_manifest(self.root, verify=verify)
        self.workers = workers
        if threads is None and workers > 1:
            threads = max(1, _cores() // workers)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        if low_memory:
            opts.enable_cpu_mem_arena = False
            opts.enable_mem_pattern = False
            _mmap_large_allocations()
        providers = providers or ["CPUExecutionProvider"]
        g = self.manifest["graphs"]
        try:
            self.vision = ort.InferenceSession(str(self.root / g["vision"]), opts, providers=providers)
            self.embed = ort.InferenceSession(str(self.root / g["embed"]), opts, providers=providers)
            self.decoder = ort.InferenceSession(str(self.root / g["decoder"]), opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise PackageError(f"{self.root}: a graph does not load ({exc})") from None
        self.tokenizer = Tokenizer.from_file(str(self.root / self.manifest["tokenizer"]))
        t = self.manifest["tokens"]
        self.prompt_ids = np.asarray(self.manifest["prompt"]["input_ids"], dtype=np.int64)
        self.image_token_id = t["image_token_id"]
        self.eos_ids = set(t["eos_token_ids"])
        self.dims = self.manifest["text"]
        # Qwen2-VL / Qwen2.5-VL: the decoder takes M-RoPE positions [3, batch, seq] (temporal, height, width),
        # and the image's token count follows its size (the prompt's image run is re-expanded per image)
        self.mrope = self.dims.get("positions") == "mrope"
        inputs = [i.name for i in self.decoder.get_inputs()]
        self.past_names = [name for name in inputs if name.startswith("past.")]
        # packages exported before the decoder took logits_to_keep compute logits at every position
        self.keeps_logits = "logits_to_keep" in inputs
        self.labels = self.manifest["labels"]
        self.answer_format = AnswerFormat.from_manifest(self.manifest)  # checked by read_manifest
        self.style = self.manifest["source"].get("question_style", "cot")  # the question it answers
        quant = self.manifest["quantization"]
        # quantize_dynamic's decoder quantizes each activation tensor with one scale, the batch's: an image's
        # answer would then depend on the images decoded beside it. Such packages decode one image at a time.
        self.batch_invariant = quant.get("batch_invariant", quant.get("method") != "quantize_dynamic QInt8")

    kind = "onnx"

    @property
    def size_bytes(self) -> int:
        return self.manifest["size_bytes"]

    @property
    def name(self) -> str:
        return f"{self.manifest['source'].get('stage') or 'model'} onnx-{self.manifest['quantization']['name']}"

    def pixel_values(self, image) -> np.ndarray:
        return preprocess(image, self.manifest["image"])

    def image_grid(self, pixel_values: np.ndarray) -> tuple[int, int] | None:
        """The image's merged-patch grid (rows, columns) where the positions depend on it (M-RoPE), else None:
        Qwen's vision input carries it in its shape ([rows, cols, m², patch_dim])."""
        return (int(pixel_values.shape[0]), int(pixel_values.shape[1])) if self.mrope else None

    def _prompt(self, slots: int, grid: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray | None, int]:
        """(prompt ids with ``slots`` image tokens, their M-RoPE positions [3, n] or None, the offset of the
        positions of the tokens after the prompt from their index). Qwen's rule (transformers'
        ``get_rope_index``): text counts up on all three axes; the image's tokens sit at the position p where
        it starts, plus their row on the height axis and column on the width axis; text after it resumes at
        p + max(rows, cols)."""
        ids = self.prompt_ids
        if not self.mrope:
            return ids, None, 0
        at = np.flatnonzero(ids == self.image_token_id)
        if len(at) == 0 or at[-1] - at[0] + 1 != len(at):
            raise PackageError("the prompt must hold one run of image tokens")
        rows, cols = grid
        if rows * cols != slots:
            raise PackageError(f"an image grid of {rows}x{cols} cannot fill {slots} image slots")
        ids = np.concatenate([ids[:at[0]], np.full(slots, self.image_token_id, np.int64), ids[at[-1] + 1:]])
        start, after = int(at[0]), len(ids) - int(at[0]) - slots
        image = np.stack([np.full(slots, start), start + np.repeat(np.arange(rows), cols),
                          start + np.tile(np.arange(cols), rows)])
        text_after = start + max(rows, cols) + np.arange(after)
        positions = np.concatenate([np.broadcast_to(np.arange(start), (3, start)), image,
                                    np.broadcast_to(text_after, (3, after))], axis=1).astype(np.int64)
        return ids, positions, int(positions.max()) + 1 - len(ids)

    def _decode(self, embeds: np.ndarray, mask: np.ndarray, positions: np.ndarray, past: list[np.ndarray],
                keep: np.ndarray | None = None, delta: int = 0):
        """One decoder run: (logits at the ``keep`` positions of the new tokens — default the last one —,
        the KV cache). ``positions`` [batch, new] are the tokens' indices in the sequence; M-RoPE decoders
        get them plus ``delta`` on all three axes (M-RoPE prompts pass their own [3, batch, new])."""
        if self.mrope and positions.ndim == 2:
            positions = np.ascontiguousarray(np.broadcast_to((positions + delta)[None], (3, *positions.shape)))
        keep = np.array([embeds.shape[1] - 1], np.int64) if keep is None else np.asarray(keep, np.int64)
        feed = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": positions}
        if self.keeps_logits:
            feed["logits_to_keep"] = keep
        feed.update(zip(self.past_names, past))
        out = self.decoder.run(None, feed)
        return (out[0] if self.keeps_logits else out[0][:, keep]), out[1:]

    def prefill(self, features: np.ndarray, all_logits: bool = False,
                grid: tuple[int, int] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """Run the prompt with image ``features`` [batch, slots, dim] in its image slots, one row per image:
        (logits at its last position, or at every position with ``all_logits``, and the KV cache). ``grid``:
        the images' ``image_grid`` (M-RoPE packages: all rows of one size)."""
        return self._prefill(features, all_logits, grid)[:2]

    def _prefill(self, features: np.ndarray, all_logits: bool, grid: tuple[int, int] | None):
        """``prefill``, and the prompt it ran and its ``delta`` (see ``_prompt``)."""
        prompt, mrope_positions, delta = self._prompt(features.shape[1], grid)
        ids = prompt[None]
        batch, n = features.shape[0], ids.shape[1]
        embeds = np.repeat(self.embed.run(None, {"input_ids": ids})[0], batch, axis=0)
        slots = ids[0] == self.image_token_id
        if slots.sum() != features.shape[1]:
            raise PackageError(f"prompt has {int(slots.sum())} image slots, vision gives {features.shape[1]}")
        embeds[:, slots] = features
        past = [np.zeros((batch, self.dims["kv_heads"], 0, self.dims["head_dim"]), np.float32)
                for _ in self.past_names]
        if mrope_positions is not None:
            positions = np.ascontiguousarray(np.broadcast_to(mrope_positions[:, None], (3, batch, n)))
        else:
            positions = np.ascontiguousarray(np.broadcast_to(np.arange(n, dtype=np.int64), (batch, n)))
        logits, past = self._decode(embeds, np.ones((batch, n), np.int64), positions, past,
                                    np.arange(n) if all_logits else None)
        return logits, past, prompt, delta

    def generate(self, image=None, *, pixel_values: np.ndarray | None = None, max_new_tokens: int = 160,
                 temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None,
                 on_text: Callable[[str], None] | None = None, label_probs: bool = True) -> Generation:
        """Greedy (temperature 0) or sampled generation for one image; ``on_text`` receives text deltas.
        ``label_probs=False`` skips scoring the labels after generation (benchmarks, export validation)."""
        t0 = time.perf_counter()
        pv = pixel_values if pixel_values is not None else self.pixel_values(image)
        return self._generate([pv], t0, max_new_tokens, temperature, top_p, np.random.default_rng(seed),
                              label_probs, on_text)[0]

    def generate_batch(self, images, *, max_new_tokens: int = 160, batch_size: int = 8, temperature: float = 0.0,
                       top_p: float = 1.0, seed: int | None = None, label_probs: bool = True,
                       on_batch: Callable[[int], None] | None = None,
                       workers: int | None = None) -> list[Generation]:
        """``generate`` for many images, ``batch_size`` at a time decoded together: one decoder run per step
        serves the whole batch, which is what makes a CPU evaluation fast (a decode step reads every weight once,
        whatever the batch). Each greedy result equals ``generate``'s for its image up to float rounding; its
        timings are its batch's (preprocess and vision of the batch, time to the batch's first tokens, decode
        until its own end). ``workers`` batches run at once (default: the package's ``workers``); with
        sampling, batch ``i`` draws from ``seed`` and ``i``, so results do not depend on ``workers``.
        ``on_batch(n)`` is called in order after each batch of ``n`` images (a progress bar's update).
        Packages whose answers would depend on the batch (``batch_invariant`` False: an int8 decoder from
        ``quantize_dynamic``) decode one image at a time, each image a batch."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        workers = workers or self.workers
        # M-RoPE packages: each image's prompt length follows its size, so one image per batch
        size = batch_size if self.batch_invariant and not self.mrope else 1
        units = [images[at:at + size] for at in range(0, len(images), size)]

        def run(index: int) -> list[Generation]:
            t0 = time.perf_counter()
            pvs = [self.pixel_values(image) for image in units[index]]
            rng = np.random.default_rng(None if seed is None else [seed, index])
            return self._generate(pvs, t0, max_new_tokens, temperature, top_p, rng, label_probs)

        results: list[Generation] = []
        if workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(workers)
            done = pool.map(run, range(len(units)))  # onnxruntime runs sessions concurrently, without the GIL
        else:
            pool, done = None, map(run, range(len(units)))
        try:
            for unit in done:
                results += unit
                if on_batch is not None:
                    on_batch(len(unit))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        return results

    def _generate(self, pvs: list[np.ndarray], t0: float, max_new_tokens: int, temperature: float, top_p: float,
                  rng, label_probs: bool, on_text: Callable[[str], None] | None = None) -> list[Generation]:
        """Decode the images of ``pvs`` together from ``t0`` (when their preprocessing began); ``on_text``
        streams the text of a batch of one. A row that stops leaves the batch, so the others' steps get cheaper."""
        t_pre = time.perf_counter()
        features = np.concatenate([self.vision.run(None, {"pixel_values": pv.astype(np.float32)})[0] for pv in pvs])
        t_vis = time.perf_counter()
        logits, past, prompt, delta = self._prefill(features, False, self.image_grid(pvs[0]))
        n, batch = prompt.shape[0], len(pvs)
        out_ids: list[list[int]] = [[] for _ in range(batch)]
        stopped, ended = ["length"] * batch, [0.0] * batch
        pasts: list[list[np.ndarray] | None] = [None] * batch  # each row's cache when it stopped (label scoring)
        rows = list(range(batch))  # the rows still generating, in the order of the batch axis
        text, sent, first_at = "", 0, None  # sent: characters of text handed to on_text
        for step in range(max_new_tokens):
            tokens = [self._pick(logits[i, -1].astype(np.float64), temperature, top_p, rng) for i in range(len(rows))]
            now = time.perf_counter()
            first_at = first_at or now
            going = [i for i, token in enumerate(tokens) if token not in self.eos_ids]
            for i, (row, token) in enumerate(zip(rows, tokens)):
                if token in self.eos_ids:
                    stopped[row], ended[row] = "eos", now
                    if label_probs:  # the cache holds the prompt and every token of this row
                        pasts[row] = [p[i:i + 1] for p in past]
                else:
                    out_ids[row].append(token)
            if on_text is not None and going:
                text = self.tokenizer.decode(out_ids[0], skip_special_tokens=True)
                # A byte-level BPE token can end inside a multi-byte character (Qwen2.5: "感" is two tokens),
                # which decodes as U+FFFD until its last byte arrives; stream only up to there, so what was
                # sent stays.
                ready = len(text.rstrip("\ufffd"))
                if ready > sent:
                    on_text(text[sent:ready])
                    sent = ready
            if not going:
                break
            if len(going) < len(rows):
                rows = [rows[i] for i in going]
                past = [p[going] for p in past]
            pos = n + step
            feed = np.asarray([[tokens[i]] for i in going], np.int64)
            emb = self.embed.run(None, {"input_ids": feed})[0]
            logits, past = self._decode(emb, np.ones((len(rows), pos + 1), np.int64),
                                        np.full((len(rows), 1), pos, np.int64), past, delta=delta)
        end = time.perf_counter()
        for i, row in enumerate(rows):
            if stopped[row] == "length":  # still generating when the budget ran out
                ended[row] = end
                if label_probs:
                    pasts[row] = [p[i:i + 1] for p in past]
        first_at = first_at or end
        results = []
        for row in range(batch):
            text = self.tokenizer.decode(out_ids[row], skip_special_tokens=True)
            if on_text is not None and len(text) > sent:  # stopped inside a character: its U+FFFD is the text
                on_text(text[sent:])
            parsed = self.answer_format.parse(text)
            t_label = time.perf_counter()
            probs, forced = self.score_labels(out_ids[row], pasts[row], prompt, delta) if label_probs else ({}, False)
            results.append(Generation(text=text, token_ids=out_ids[row], label=parsed.label,
                                      well_formed=parsed.well_formed, ttft_s=first_at - t0,
                                      decode_s=ended[row] - first_at, preprocess_s=t_pre - t0,
                                      vision_s=t_vis - t_pre, stopped=stopped[row], label_probs=probs,
                                      label_probs_forced=forced, label_s=time.perf_counter() - t_label))
        return results

    @staticmethod
    def _pick(logits: np.ndarray, temperature: float, top_p: float, rng) -> int:
        if temperature <= 0:
            return int(np.argmax(logits))
        z = logits / temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        order = np.argsort(-p)
        keep = np.cumsum(p[order]) - p[order] < top_p  # the smallest set whose mass reaches top_p
        p_kept = p[order][keep]
        return int(rng.choice(order[keep], p=p_kept / p_kept.sum()))

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def score_labels(self, token_ids: list[int], past: list[np.ndarray], prompt: np.ndarray | None = None,
                     delta: int = 0) -> tuple[dict[str, float], bool]:
        """Per-label probabilities of the answer after the generated ``token_ids`` (``label_scoring``), and
        whether they were forced. ``past`` is the KV cache of the prompt followed by every one of ``token_ids``;
        ``prompt`` and ``delta``: the prompt that ran and its position offset (``_prefill``; default: the
        stored prompt)."""
        prompt = self.prompt_ids if prompt is None else prompt
        from svlm_runtime.label_scoring import label_probabilities, plan_label_scoring

        plan = plan_label_scoring(token_ids, self.encode, self.decode, self.labels, self.style, self.answer_format)
        context = [*prompt.tolist(), *token_ids[:plan.kept], *plan.bridge]
        # Cache every context token but the last, which is fed again with each label so that its logits
        # score the label's first token.
        cached = len(prompt) + plan.kept - (not plan.bridge)
        past = [p[:, :, :cached] for p in past]
        if len(plan.bridge) > 1:
            feed = np.asarray([plan.bridge[:-1]], np.int64)
            n = feed.shape[1]
            _, past = self._decode(self.embed.run(None, {"input_ids": feed})[0], np.ones((1, cached + n), np.int64),
                                   np.arange(cached, cached + n, dtype=np.int64)[None], past, delta=delta)
            cached += n
        rows = [[context[-1], *ids[:-1]] for ids in plan.labels.values()]
        width, batch = max(map(len, rows)), len(rows)
        ids = np.zeros((batch, width), np.int64)
        mask = np.zeros((batch, cached + width), np.int64)
        mask[:, :cached] = 1
        for b, row in enumerate(rows):  # right padding: a padded tail cannot reach the real tokens
            ids[b, :len(row)] = row
            mask[b, cached:cached + len(row)] = 1
        positions = np.broadcast_to(np.arange(cached, cached + width, dtype=np.int64), (batch, width))
        logits, _ = self._decode(self.embed.run(None, {"input_ids": ids})[0], mask, np.ascontiguousarray(positions),
                                 [np.repeat(p, batch, axis=0) for p in past], np.arange(width), delta=delta)
        sums = {}
        for b, (label, target) in enumerate(plan.labels.items()):
            z = logits[b, :len(target)].astype(np.float64)
            z = z - z.max(-1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
            sums[label] = float(logp[np.arange(len(target)), target].sum())
        return label_probabilities(sums), plan.forced
