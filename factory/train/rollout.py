"""Fast GRPO rollouts: sample from a dense copy of the policy instead of the 4-bit training model.

GRPO spends nearly all of a step generating (DESIGN.md §4: ~285 tokens/s inside trl's QLoRA GRPO for a
1B shape, against 4,187 for bf16 with a static, compiled cache). The training model keeps its nf4 base; a
second copy in the compute dtype holds ``dequantized base + LoRA delta`` for every adapted layer and is
what ``generate`` runs on. It is refreshed from the training model whenever the optimizer has stepped since
the last rollout, so it samples from the policy being trained: the only difference is rounding in the
dense weights (a CPU test bounds the log-prob gap; trl computes the loss's old log-probs with the training
model itself). The copy costs one dense copy of the adapted layers (~1 GB for a 0.5B language model in bf16); frozen dense
modules (vision tower, projector, embeddings, norms) are shared with the training model.

The trainer change is a scoped patch: during trl's own generation step, the unwrapped model's
``generate`` is routed to the copy; nothing of trl's generation code is copied.

``batch_size`` (the stage's ``rollout_batch_size``) caps how many sequences generate at once: trl hands
``generate`` a whole generation batch (prompts × G per optimizer step), and the static KV cache of 128
sequences × 1.3k tokens is ~4.8 GB on a 2B shape. Chunks of equal size reuse one compiled graph.
"""

from __future__ import annotations

import contextlib
import copy as copy_module

import torch


def _dense_weight(module) -> torch.Tensor:
    """The full-precision weight of a Linear, dequantizing a bitsandbytes 4-bit one."""
    from peft.utils.integrations import dequantize_module_weight

    weight = module.weight
    if weight.__class__.__name__ in ("Params4bit", "Int8Params"):
        return dequantize_module_weight(module)
    return weight


def compute_dtype(peft_model) -> torch.dtype:
    """The dtype the policy's adapted layers compute in: bitsandbytes' compute dtype for a 4-bit base, else
    the dtype of the dense base weights. Not the first floating parameter, which may be a trainable fp32
    master weight (``common.keep_trainable_fp32``)."""
    from peft.tuners.lora import LoraLayer

    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            base = module.get_base_layer()
            dtype = getattr(base, "compute_dtype", None) or base.weight.dtype  # Linear4bit has compute_dtype
            if dtype.is_floating_point:
                return dtype
    return next(p.dtype for p in peft_model.parameters() if p.is_floating_point() and not p.requires_grad)


def check_supported(peft_model) -> None:
    """Refuse adapters the copy cannot reproduce: it merges ``B @ A × scaling`` only, so DoRA's magnitude
    and ``lora_bias`` would be silently dropped and the copy would sample from another policy."""
    from peft.tuners.lora import LoraLayer

    from factory.errors import ConfigError

    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for adapter in module.active_adapters:
            for flag, what in (("use_dora", "DoRA (use_dora)"), ("lora_bias", "lora_bias")):
                if getattr(module, flag, {}).get(adapter, False):
                    raise ConfigError(f"dense rollouts do not support {what} adapters ({name}): the rollout copy "
                                      "merges only B @ A and would sample from another policy; set rollout: trl")


def _policy_modules(base) -> dict[str, torch.nn.Module]:
    """The policy's modules under the names a plain model of its class uses: a LoRA layer under its own name,
    and the active copy of each ``modules_to_save`` module, children included, under the original's name
    (its frozen ``original_module`` and inactive copies are left out)."""
    from peft.utils.other import ModulesToSaveWrapper

    wrappers = {name: m for name, m in base.named_modules() if isinstance(m, ModulesToSaveWrapper)}
    out: dict[str, torch.nn.Module] = {}
    for name, module in base.named_modules():
        if name in wrappers:
            continue
        owner = next((w for w in wrappers if name.startswith(w + ".")), None)
        if owner is not None:
            active = f"{owner}.modules_to_save.{wrappers[owner].active_adapters[0]}"
            if name != active and not name.startswith(active + "."):
                continue
            name = owner + name[len(active):]
        out[name] = module
    return out


class RolloutCopy:
    """A dense copy of a PEFT policy (base + merged LoRA), kept in sync with ``refresh``."""

    def __init__(self, peft_model, dtype: torch.dtype | None = None, static_cache: bool = False,
                 batch_size: int | None = None, sampler: str = "generate"):
        from peft.tuners.lora import LoraLayer

        check_supported(peft_model)
        base = peft_model.get_base_model()
        self.dtype = dtype or compute_dtype(peft_model)
        device = next(peft_model.parameters()).device
        config = base.config
        with torch.device("meta"):
            copy = type(base)(config)
        self.lora: dict[str, object] = {}
        self.trained: list[tuple[torch.Tensor, torch.Tensor]] = []  # (copy, policy) of fully trained weights
        src_modules = _policy_modules(base)
        with torch.no_grad():
            for name, module in copy.named_modules():
                src = src_modules.get(name)
                if src is None:
                    continue
                if isinstance(src, LoraLayer):
                    self.lora[name] = src
                    src = src.base_layer
                for pname, param in list(module.named_parameters(recurse=False)):
                    source = getattr(src, pname)
                    quantized = source.__class__.__name__ in ("Params4bit", "Int8Params")
                    # A frozen, dense source weight (vision tower, projector, embeddings, norms) is shared, not
                    # copied: only adapted, quantized or trained weights need a second copy (~1.5 GB saved on 2B).
                    if not (source.requires_grad or quantized or name in self.lora) and source.dtype == self.dtype:
                        module._parameters[pname] = source
                        continue
                    value = _dense_weight(src) if quantized else source
                    module._parameters[pname] = torch.nn.Parameter(
                        value.detach().to(device=device, dtype=self.dtype).clone(), requires_grad=False)
                    if source.requires_grad:
                        self.trained.append((module._parameters[pname], source))
                for bname, buf in list(module.named_buffers(recurse=False)):
                    value = getattr(src, bname, None)
                    if value is None:
                        raise RuntimeError(f"rollout copy: buffer {name}.{bname} has no source")
                    module._buffers[bname] = value
        left = [n for n, t in [*copy.named_parameters(), *copy.named_buffers()] if t.is_meta]
        if left:
            raise RuntimeError(f"rollout copy: no source for {left[:5]} ({len(left)} tensors)")
        copy.eval().requires_grad_(False)
        # Its own generation config: the training model's must not inherit the static cache.
        copy.generation_config = copy_module.deepcopy(base.generation_config)
        if static_cache:
            copy.generation_config.cache_implementation = "static"
        self.model = copy
        self.batch_size = batch_size
        self.decoder = None
        if sampler == "fused":
            from factory.train.decode import FusedDecoder, compile_options

            # on CUDA each token is one CUDA-graph replay; on a CPU the same step runs eagerly
            self.decoder = FusedDecoder(copy, compile=compile_options(device.type))
        elif sampler != "generate":
            raise ValueError(f"rollout sampler {sampler!r}: want generate or fused")
        self.step: int | None = None
        self.refresh(peft_model)

    @torch.no_grad()
    def refresh(self, peft_model, step: int | None = None) -> None:
        """Write ``dense base + LoRA delta`` of every adapted layer, and every fully trained weight
        (``modules_to_save``), into the copy."""
        modules = dict(self.model.named_modules())
        for name, layer in self.lora.items():
            weight = _dense_weight(layer.base_layer).float()
            for adapter in layer.active_adapters:
                if adapter in layer.lora_A:
                    weight = weight + layer.get_delta_weight(adapter).float()
            modules[name].weight.copy_(weight.to(self.dtype))
        for target, source in self.trained:
            target.copy_(source.to(self.dtype))
        self.step = step

    def generate(self, **inputs) -> torch.Tensor:
        """``generate`` on the copy, ``batch_size`` sequences at a time (all at once when the inputs cannot be
        split by sequence); chunks that stop early are padded to the longest with the pad token."""
        rows = inputs["input_ids"].shape[0]
        chunks = split_rows(inputs, rows, self.batch_size) if self.batch_size and self.batch_size < rows else None
        decode = self.decoder.generate if self.decoder is not None else self.model.generate
        if chunks is None:
            return decode(**inputs)
        outs = [decode(**chunk) for chunk in chunks]
        width = max(o.shape[1] for o in outs)
        config = inputs.get("generation_config") or self.model.generation_config
        pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
        pad = pad[0] if isinstance(pad, (list, tuple)) else pad
        return torch.cat([torch.nn.functional.pad(o, (0, width - o.shape[1]), value=pad) for o in outs])

    @contextlib.contextmanager
    def serving(self, model):
        """Within the block, ``model.generate`` runs on the copy (restored afterwards)."""
        had = "generate" in model.__dict__
        old = model.__dict__.get("generate")
        model.generate = self.generate
        try:
            yield
        finally:
            if had:
                model.generate = old
            else:
                del model.generate


def split_rows(inputs: dict, rows: int, size: int) -> list[dict] | None:
    """``generate`` inputs cut into chunks of ``size`` sequences, or None when a tensor cannot be assigned to
    sequences. Per-sequence tensors have ``rows`` first; Qwen2-VL's flattened patches follow ``image_grid_thw``
    (one image per sequence: each image's patch count is the product of its grid)."""
    grid = inputs.get("image_grid_thw")
    if grid is not None and grid.shape[0] != rows:
        return None  # several images in a sequence: not split
    patch_ends = torch.cumsum(grid.prod(-1), 0).tolist() if grid is not None else None
    chunks = []
    for start in range(0, rows, size):
        end = min(start + size, rows)
        chunk = {}
        for key, value in inputs.items():
            if not isinstance(value, torch.Tensor):
                chunk[key] = value
            elif key == "pixel_values" and patch_ends is not None:
                chunk[key] = value[(patch_ends[start - 1] if start else 0):patch_ends[end - 1]]
            elif value.shape[0] == rows:
                chunk[key] = value[start:end]
            else:
                return None
        chunks.append(chunk)
    return chunks


def fast_grpo_trainer_class():
    """A GRPOTrainer whose rollouts run on a :class:`RolloutCopy` refreshed after each optimizer step."""
    from accelerate.utils import extract_model_from_parallel
    from trl import GRPOTrainer

    class FastRolloutGRPOTrainer(GRPOTrainer):
        rollout_options: dict = {}

        def _generate_single_turn(self, *args, **kwargs):
            policy = extract_model_from_parallel(self.model)
            if getattr(self, "_rollout", None) is None:
                self._rollout = RolloutCopy(policy, dtype=compute_dtype(policy), **self.rollout_options)
                self._rollout.step = self.state.global_step
                if self.rollout_options.get("static_cache"):
                    # trl passes its own generation config to generate(); that one must ask for the static
                    # cache, and re-allow compilation, which trl turns off for its training-model rollouts
                    self.generation_config.cache_implementation = "static"
                    self.generation_config.disable_compile = False
            elif self._rollout.step != self.state.global_step:
                self._rollout.refresh(policy, self.state.global_step)
            with self._rollout.serving(policy):
                return super()._generate_single_turn(*args, **kwargs)

    return FastRolloutGRPOTrainer
