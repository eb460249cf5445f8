"""Fused decoding for dense rollouts: one compiled step per token that runs the model, the sampler and the
end-of-sequence bookkeeping, with no host round trip between tokens.

Why hand-written: ``generate`` compiles only the model's forward. Around it, every token runs eager Python
(input preparation, logits processors, ``torch.multinomial``, which CUDA graphs cannot hold, stopping checks
and a growing ``torch.cat``), which at rollout batch sizes costs more than the forward itself. transformers'
continuous batching takes no images, and vLLM is not a safe default with images + QLoRA (DESIGN.md §3).

What is not hand-written: the prompt. ``generate`` runs the prefill (vision tower, the family's position ids)
into a static cache the decoder owns, and samples the first token; a forward pre-hook takes the inputs it
prepares for the first decode step and stops it there. Each later step feeds the model those inputs advanced
by one position, so whatever a family adds (Qwen2-VL's 3-D rope positions, its token types) comes from the family's own code,
whatever the transformers version. The logits processors are transformers' own classes; sampling is the
exponential race (``argmax(p / E)``, ``E ~ Exp(1)``), which draws from ``p`` exactly, like ``multinomial``.

Only options the step can reproduce are accepted (:data:`SUPPORTED`); any other set in the generation config
raises :class:`UnsupportedGeneration` rather than sampling from another distribution.
"""

from __future__ import annotations

import inspect
import warnings

import torch
import torch._dynamo.exc

#: what ``fullgraph=True`` raises when a function has been compiled for too many shapes or objects
_RECOMPILE_LIMIT = tuple(getattr(torch._dynamo.exc, name) for name in ("FailOnRecompileLimitHit", "RecompileError")
                         if hasattr(torch._dynamo.exc, name))

#: cache lengths are rounded up to a multiple of this: one compiled step serves nearby prompt lengths
CACHE_STEP = 256
#: caches (and step buffers) kept per decoder, one per batch shape: a rollout's full chunks, its last chunk,
#: trl's validation batches
KEPT_SHAPES = 3


def compile_options(device_type: str) -> dict | None:
    """``torch.compile`` options for the step on a device: on CUDA one CUDA-graph replay per token (what
    ``mode="reduce-overhead"`` sets, spelled as options so that ``fallback_random`` can join it: inductor's own
    random draws lie on a float32 grid even for float64, see :func:`exponential_noise`); elsewhere eager."""
    if device_type != "cuda":
        return None
    return {"fullgraph": True, "dynamic": False, "options": {"triton.cudagraphs": True, "fallback_random": True}}


def compile_counts() -> dict:
    """Since ``torch._dynamo.utils.counters`` was last cleared: the graphs dynamo compiled, and the CUDA-graph
    skips inductor counted (a skipped step runs without CUDA graphs, silently: its speed is not the graphed one)."""
    from torch._dynamo.utils import counters

    return {"compiled_graphs": int(counters["stats"]["unique_graphs"]),
            "cudagraph_skips": int(counters["inductor"]["cudagraph_skips"])}


#: generation-config fields the fused step honours; any other field that differs from its default is refused
SUPPORTED = {"max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p", "suppress_tokens",
             "min_new_tokens", "pad_token_id", "eos_token_id", "bos_token_id", "cache_implementation",
             "disable_compile", "compile_config", "use_cache", "max_length", "transformers_version",
             "_from_model_config"}


class UnsupportedGeneration(ValueError):
    """A generation option the fused step cannot reproduce."""


class _FirstDecodeStep(Exception):
    """Raised by the capture hook to leave ``generate`` once it has prepared the first decode step."""


def _resolved_config(model, generation_config, **kwargs):
    """``(config, model inputs)`` as ``generate`` resolves them (the call's options, then the model's
    generation config, then the library's defaults: transformers' own resolution), the config checked for
    options the step cannot reproduce."""
    from transformers import GenerationConfig

    config, inputs = model._prepare_generation_config(generation_config, **kwargs)
    # the library's defaults: a value left at its default switches nothing on (num_beams 1, typical_p 1.0, ...)
    defaults = {**GenerationConfig().to_dict(), **GenerationConfig._get_default_generation_params()}
    odd = sorted(k for k, v in config.to_dict().items()
                 if k not in SUPPORTED and k in defaults and v not in (None, False, [], {}) and v != defaults[k])
    if odd:
        raise UnsupportedGeneration(f"fused decoding does not support {', '.join(odd)}; use rollout_sampler: "
                                    "generate")
    if config.max_new_tokens is None:
        raise UnsupportedGeneration("fused decoding needs max_new_tokens")
    return config, inputs


def _warpers(config, vocab: int, device):
    """transformers' own processors for the options in the config, in the order ``generate`` applies them."""
    from transformers.generation.logits_process import (MinPLogitsWarper, SuppressTokensLogitsProcessor,
                                                        TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

    out = []
    if config.suppress_tokens:
        out.append(SuppressTokensLogitsProcessor(config.suppress_tokens, device=device))
    if config.do_sample:
        if config.temperature is not None and config.temperature != 1.0:
            out.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k:
            out.append(TopKLogitsWarper(top_k=min(config.top_k, vocab)))
        if config.top_p is not None and config.top_p < 1.0:
            out.append(TopPLogitsWarper(top_p=config.top_p))
        if config.min_p is not None:
            out.append(MinPLogitsWarper(min_p=config.min_p))
    return out


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in torch.as_tensor(value).flatten().tolist()]  # an int, a list or a tensor


class FusedDecoder:
    """``generate`` for a decoder-only (vision-)language model: prefill by ``generate``, then a compiled
    per-token step. ``compile``: ``None`` (eager), or ``torch.compile`` arguments (:func:`compile_options`
    gives the device's). ``check_every``: tokens between the host checks of whether every sequence has ended
    (each check is one device sync)."""

    def __init__(self, model, compile: dict | None = None, check_every: int = 16):
        self.model = model
        self.compile = compile
        self.check_every = check_every
        self._step = None
        self._buffers: dict = {}  # state shapes -> buffers, least recently used first
        self._kv: dict = {}  # rows -> (length, cache), least recently used first

    def _cache(self, rows: int, length: int):
        """``(cache, its length)``: a static KV cache for ``rows`` sequences, emptied, at least ``length`` long.
        Kept per row count (a rollout's chunks: full ones and the rest; trl's validation batches) and reused
        while long enough, never shrinking, so the step's CUDA graphs replay on the same addresses
        (``generate`` builds a new cache every call)."""
        from transformers import StaticCache

        kept = self._kv.pop(rows, None)
        if kept is not None and kept[0] >= length:
            kept[1].reset()
        else:  # its tensors are allocated at the prefill's first write
            kept = (length, StaticCache(config=self.model.config, max_cache_len=length))
        self._kv[rows] = kept  # most recently used last
        while len(self._kv) > KEPT_SHAPES:
            self._kv.pop(next(iter(self._kv)))
        return kept[1], kept[0]

    def _capture(self, inputs: dict, config, cache) -> tuple[torch.Tensor, dict | None]:
        """Run ``generate`` on ``cache`` up to the first decode step: the prompt and first token, and the
        step's inputs (None when ``generate`` ended before it)."""
        calls: list[dict] = []  # the kwargs of each forward: the prefill's, then the first decode step's

        def hook(module, args, kwargs):
            calls.append(dict(kwargs))
            if len(calls) == 2:
                raise _FirstDecodeStep

        # eager: the hook must run outside a compiled graph; the cache is ours (a user cache excludes the option)
        prefill_config = config.__class__(**{**config.to_dict(), "disable_compile": True,
                                             "cache_implementation": None})
        # transformers 5.24 names the cache argument ``cache``; 5.17 ``past_key_values``
        name = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        # generate would fill the unset option from the model's own config (a rollout copy asks for "static"),
        # then refuse it beside a cache object
        own = self.model.generation_config.cache_implementation
        self.model.generation_config.cache_implementation = None
        handle = self.model.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            sequences = self.model.generate(**inputs, **{name: cache}, generation_config=prefill_config)
            return sequences, None
        except _FirstDecodeStep:
            return None, calls[1]
        finally:
            handle.remove()
            self.model.generation_config.cache_implementation = own

    @torch.no_grad()
    def generate(self, generation_config=None, **kwargs) -> torch.Tensor:
        """Prompt + completion ids, ``[rows, prompt + longest completion]``; ended rows padded. Takes what
        ``generate`` takes: model inputs, and generation options in ``generation_config`` or as keywords."""
        config, inputs = _resolved_config(self.model, generation_config, **kwargs)
        prompt_ids = inputs["input_ids"]
        rows, prompt = prompt_ids.shape
        if inputs.get("attention_mask") is None:
            if config.pad_token_id is not None and bool((prompt_ids == config.pad_token_id).any()):
                raise UnsupportedGeneration("fused decoding of padded prompts needs their attention_mask")
            inputs["attention_mask"] = torch.ones_like(prompt_ids)
        mask = inputs["attention_mask"]
        new = config.max_new_tokens
        # the cache length rounded up: prompts of other lengths (trl pads each batch to its longest) keep the
        # step's shapes, so one compiled graph serves them all
        cache, length = self._cache(rows, -(-(prompt + new) // CACHE_STEP) * CACHE_STEP)
        sequences, step_inputs = self._capture(inputs, config, cache)
        if step_inputs is None:  # generate finished on its own (one token, or every row ended at once)
            return sequences
        first = step_inputs.pop("input_ids")
        if first.ndim != 2 or first.shape[1] != 1:
            raise UnsupportedGeneration(f"fused decoding expects one token per decode step, got {tuple(first.shape)}")
        device = first.device
        state = {
            "tokens": first.clone(),
            # the padding mask over the whole cache: a step's own causal mask hides the positions not yet written
            "attention_mask": torch.cat([mask, mask.new_ones(rows, length - prompt)], 1),
            "position_ids": step_inputs.pop("position_ids", None),
            "cache_position": step_inputs.pop("cache_position", None),
            "index": torch.zeros((), dtype=torch.long, device=device),  # tokens written to ``out``
            "out": torch.empty(rows, new - 1, dtype=torch.long, device=device),
        }
        step_inputs.pop("attention_mask", None)
        eos = torch.tensor(_ids(config.eos_token_id), dtype=torch.long, device=device)
        pad_ids = _ids(config.pad_token_id) or _ids(config.eos_token_id) or [0]
        state["alive"] = ~torch.isin(first[:, 0], eos)
        state["length"] = torch.zeros(rows, dtype=torch.long, device=device)  # tokens after the first, EOS included
        vocab = self.model.get_output_embeddings().weight.shape[0]
        fixed = {"model": self.model, "inputs": step_inputs, "warpers": _warpers(config, vocab, device), "eos": eos,
                 "pad": torch.tensor(pad_ids[0], dtype=torch.long, device=device), "sample": bool(config.do_sample),
                 # generate's MinNewTokens rule: EOS is barred while fewer than min_new_tokens tokens are out
                 "min_new": int(config.min_new_tokens or 0),
                 "eos_mask": torch.isin(torch.arange(vocab, device=device), eos)}
        state = self._persistent(state)
        step = self._compiled()
        for done in range(new - 1):
            if done % self.check_every == 0 and not bool(state["alive"].any()):
                break
            try:
                step(state, fixed)
            except _RECOMPILE_LIMIT:  # raised before the step ran: nothing was written
                warnings.warn("fused decoding: torch.compile's recompile limit is reached (many shapes or models "
                              "in one process); this decoder goes on uncompiled", RuntimeWarning, stacklevel=2)
                self._step = step = _step
                step(state, fixed)
        width = 1 + int(state["length"].max())
        return torch.cat([prompt_ids, first, state["out"][:, :width - 1]], 1)

    def _persistent(self, state: dict) -> dict:
        """The step's state in buffers kept from call to call per shape (as the caches): a CUDA graph replays
        on fixed addresses, so new tensors each call would cost a new capture."""
        key = tuple((k, tuple(v.shape), v.dtype, v.device) for k, v in state.items() if v is not None)
        kept = self._buffers.pop(key, None)
        if kept is not None:
            for name, value in state.items():
                if value is not None:
                    kept[name].copy_(value)
        else:
            kept = {k: (v.clone() if v is not None else None) for k, v in state.items()}
            for value in kept.values():
                if value is not None and value.device.type == "cuda":
                    torch._dynamo.mark_static_address(value)
        self._buffers[key] = kept
        while len(self._buffers) > KEPT_SHAPES:
            self._buffers.pop(next(iter(self._buffers)))
        return kept

    def _compiled(self):
        if self._step is None:
            self._step = torch.compile(_step, **self.compile) if self.compile else _step
        return self._step


def _scores(state: dict, fixed: dict) -> torch.Tensor:
    """The processed next-token scores of every row: the model on ``tokens``, then generate's rules."""
    model_inputs = dict(fixed["inputs"])
    model_inputs.update(input_ids=state["tokens"], attention_mask=state["attention_mask"])
    for key in ("position_ids", "cache_position"):
        if state[key] is not None:
            model_inputs[key] = state[key]
    scores = fixed["model"](**model_inputs).logits[:, -1, :].float()
    if fixed["min_new"]:  # this step chooses new token number index + 2 (the first came from generate)
        barred = state["index"] + 2 <= fixed["min_new"]
        scores = torch.where(barred & fixed["eos_mask"], float("-inf"), scores)
    for warper in fixed["warpers"]:
        scores = warper(None, scores)
    return scores


def exponential_noise(like: torch.Tensor) -> torch.Tensor:
    """E ~ Exp(1) for every entry of ``like``, at float64 resolution: from a float32 uniform (a 2^-24 grid) E
    could not come below ~6e-8, and tokens rarer than that (a 151k vocabulary's tail) would be drawn too
    seldom. Compiled, this holds only with inductor's ``fallback_random`` (:func:`compile_options`): inductor's
    own draws, ``exponential_`` included, come from a float32 uniform whatever the dtype."""
    return torch.empty_like(like, dtype=torch.float64).exponential_()


def choose(scores: torch.Tensor, sample: bool) -> torch.Tensor:
    """A token per row: the argmax, or a draw from ``softmax(scores)`` by the exponential race (``argmax p/E``
    with ``E ~ Exp(1)`` picks token i with probability p_i), which CUDA graphs hold and ``multinomial`` not."""
    if not sample:
        return scores.argmax(-1)
    probs = torch.softmax(scores, -1)
    return (probs / exponential_noise(probs)).argmax(-1)


def _step(state: dict, fixed: dict) -> None:
    """One token for every row, in place: feed ``tokens``, choose the next, note which rows ended."""
    alive = state["alive"]
    chosen = torch.where(alive, choose(_scores(state, fixed), fixed["sample"]), fixed["pad"])
    state["length"].add_(alive.long())
    state["alive"].copy_(alive & ~torch.isin(chosen, fixed["eos"]))
    state["out"].index_copy_(1, state["index"].view(1), chosen[:, None])
    state["index"].add_(1)
    state["tokens"].copy_(chosen[:, None])
    for key in ("position_ids", "cache_position"):
        if state[key] is not None:
            state[key].add_(1)
