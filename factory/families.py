"""The one model-family registry: every per-family difference lives in one frozen ``Family`` entry.

Code elsewhere asks the registry (``get_family``, ``family_of``) instead of branching on a family name or
naming a family's tokens. An entry holds the HF model/processor classes (by name, resolved lazily so
importing this module stays cheap), the image placeholder token, the real checkpoint's files and facts
(``RealCheckpoint``: its tokenizer, chat template and image-processor settings in ``factory/assets/hf``,
its text vocabulary size), the chat template of the small local tokenizer, the LoRA targets, the
image-size policy applied to the processor, the ONNX split and runtime preprocessing used by ``export/``,
and the tiny builders. ``tests/test_families.py`` fails when a registered family has no tiny config, and
``tests/test_registry_owns_families.py`` when code outside this module branches on a family.

Families: InternVL (HF-native ``InternVLForConditionalGeneration``, InternVL3-1B-hf; the default),
SmolVLM (Idefics3 lineage, SmolVLM-256M/500M/2.2B), Qwen2-VL (Qwen2-VL-2B-Instruct), Qwen2.5-VL
(Qwen2.5-VL-3B-Instruct and fine-tunes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from factory.errors import SVLMError

DEFAULT_FAMILY = "internvl"

# Sizes of the random-weight models. "tiny" is for unit tests; "small" (~10M parameters with the small
# tokenizer) is the default for learning runs on a 2-core CPU. Every Linear that bitsandbytes may quantize
# has in_features % 64 == 0 (DESIGN.md §3), so the 4-bit path is testable on CPU. ``vocab`` is the size
# of the small local tokenizer; with the real one the model has the real checkpoint's vocabulary.
# ``grid`` is the vision tower's patches per side: with the small tokenizer the tiny image is
# grid x patch pixels; with the real processor the input keeps its real size (448² for InternVL) and the
# patch grows to input / grid, so the tower stays cheap and gives the same few image tokens.
TINY_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden=64, intermediate=128, layers=2, heads=2, kv_heads=1, vocab=1024,
                 v_hidden=64, v_intermediate=128, v_layers=1, v_heads=2, grid=4, patch=8),
    "small": dict(hidden=256, intermediate=768, layers=6, heads=4, kv_heads=2, vocab=4096,
                  v_hidden=256, v_intermediate=512, v_layers=4, v_heads=4, grid=8, patch=12),
}

# Real-size shapes with random weights, for GPU memory/throughput checks (benchmarks/). With the small
# tokenizer ``vocab_pad`` pads the embedding and head to the real vocabulary so their memory is real.
# InternVL3-1B: InternViT-300M (24 x 1024, 448² in 14² patches) + Qwen2.5-0.5B (24 x 896); -2B: + Qwen2.5-1.5B.
REAL_SHAPES: dict[str, dict[str, int]] = {
    "internvl3-1b-shape": dict(hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2, vocab=4096,
                               vocab_pad=151674, v_hidden=1024, v_intermediate=4096, v_layers=24, v_heads=16,
                               grid=32, patch=14),
    "internvl3-2b-shape": dict(hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2, vocab=4096,
                               vocab_pad=151674, v_hidden=1024, v_intermediate=4096, v_layers=24, v_heads=16,
                               grid=32, patch=14),
}
MODEL_SIZES: dict[str, dict[str, int]] = {**TINY_SIZES, **REAL_SHAPES}


@dataclass(frozen=True)
class OnnxSplit:
    """How ``export/`` cuts a family into graphs (vision encoder + projector, embeddings, decoder with KV)."""

    vision: str  # attribute path of the vision tower module on the HF model
    projector: str  # attribute path of the multimodal projector
    embed: str = "get_input_embeddings"
    text_model: str = "model.language_model"  # attribute path of the decoder stack (without the head)
    # model -> (module, example inputs, input names, dynamic shapes) of a vision graph that is not
    # ``image_features`` over [images, 3, H, W]: Qwen's dynamic-grid patch sequences (export/qwen_vision.py)
    vision_graph: Callable[[Any], tuple] | None = None
    # (model, the processor's outputs for one image) -> that graph's pixel_values (numpy); None: [images, 3, H, W]
    graph_pixels: Callable[[Any, Any], Any] | None = None
    # "mrope": the decoder takes [3, batch, seq] positions (temporal, height, width; Qwen's M-RoPE), which
    # svlm-runtime computes from the image grid; "1d": [batch, seq]
    positions: str = "1d"
    # ONNX Runtime GenAI's model type for ``svlm export --layout genai`` (export/genai.py); None: refused
    genai_type: str | None = None
    # pixel_values [n_images, 3, H, W] -> projected image features [n_images, tokens, hidden]; called on the
    # HF model inside the exported vision graph, so it must avoid data-dependent indexing.
    image_features: Callable[[Any, Any], Any] | None = None
    # image processor -> the manifest's preprocessing spec for the torch-free runtime (svlm_runtime/preprocess.py);
    # None: the runtime has no port of this family's preprocessing and the package says so
    image_spec: Callable[[Any], dict] | None = None
    unsupported: str | None = None  # why `svlm export` refuses this family (None: supported)
    tolerance: float = 1e-4  # fp32 ONNX vs PyTorch: max |Δlogits| the export accepts
    # why `svlm export --layout transformers.js` refuses this family (None: transformers.js has a model class
    # and processor that load its graphs, checked in its source and tested in Node and a browser)
    transformers_js_unsupported: str | None = "no transformers.js layout has been written for this family"


@dataclass(frozen=True)
class GgufSupport:
    """How ``svlm export --layout gguf`` hands a family to llama.cpp (``export/gguf.py``): what its converter
    must see in a staged copy of the checkpoint, where llama.cpp puts the image in the prompt, and how its
    runtime is held to the family's image policy. ``unsupported``: why the layout refuses the family."""

    # the rendered prompt's image placeholder: llama.cpp's multimodal tokenizer puts the image (with the
    # family's begin / end tokens, which it adds itself) where this text stood
    image_text: str = ""
    # image processor (policy applied) -> the resize the processor does before its encoder, as the manifest's
    # ``image.resize`` (svlm_runtime/gguf.py does it with Pillow, so llama.cpp's own resize is a no-op)
    resize: Callable[[Any], dict] | None = None
    # image processor -> llama.cpp's (image_min_tokens, image_max_tokens) for the policy; None: fixed count
    image_tokens: Callable[[Any], tuple[int, int]] | None = None
    # the staged copy the converter reads: config section -> architectures it must name, top-level config
    # keys to write, and tensor-name prefixes to rename (old, new)
    architectures: tuple[tuple[str, str], ...] = ()
    config: tuple[tuple[str, Any], ...] = ()
    tensor_prefixes: tuple[tuple[str, str], ...] = ()
    # the chat format as an Ollama Modelfile TEMPLATE (Go template), the same turns as the chat template
    ollama_template: str = ""
    unsupported: str | None = "no GGUF (llama.cpp) layout has been validated for this family"


@dataclass(frozen=True)
class RealCheckpoint:
    """The family's reference checkpoint: its non-weight files, shipped in ``factory/assets/hf/<assets>``
    (tokenizer, chat template, image-processor settings, generation config; see PROVENANCE.md there), and
    the facts a tiny model built from them must reproduce."""

    hub_id: str
    assets: str  # folder under factory/assets/hf
    vocab_size: int  # the text model's embedding rows (the hub config's vocab_size)


@dataclass
class TinyParts:
    """What a tiny builder gets besides the layer sizes.

    With the small local tokenizer, ``image_processor`` is None and the builder sizes the processor to the
    tiny vision tower; with the real tokenizer it holds the real checkpoint's image-processor settings
    (kwargs of the family's image-processor class), which the builder keeps and fits the tower to.
    """

    tokenizer: Any
    chat_template: str
    vocab_size: int
    bos_token_id: int | None
    eos_token_id: int | list[int]
    pad_token_id: int | None
    image_processor: dict | None = None


@dataclass(frozen=True)
class Family:
    """Everything that differs between model families. Frozen: families are data, not behaviour."""

    name: str
    model_types: tuple[str, ...]  # HF ``config.model_type`` values that belong here
    model_class: str  # transformers class name
    processor_class: str
    image_processor_class: str
    video_processor_class: str
    hub_examples: tuple[str, ...]
    image_token: str  # the prompt placeholder whose embeddings the image features replace
    real: RealCheckpoint
    chat_template: str  # for tiny models with the small tokenizer; real checkpoints ship their own
    special_tokens: tuple[str, ...]  # tokens the processor needs in the (small) tokenizer
    tokenizer_attrs: dict[str, str]  # tokenizer attributes the processor reads (e.g. context_image_token)
    eos_token: str
    pad_token: str
    # Regex over module names: LoRA goes on the language model's projections only; the vision tower stays
    # frozen (emotion cues are global and a small LoRA budget is better spent on the decoder).
    lora_target_modules: str
    # Module-path prefixes kept out of 4-bit (transformers matches them from the start of the name):
    # vision tower, projector and head are small and precision-sensitive.
    skip_4bit_modules: tuple[str, ...]
    # Image policy: image-processor attributes set after loading, so one image costs a bounded number of
    # tokens (no tiling by default: emotion is a whole-image property and tiles multiply rollout cost).
    image_policy: dict[str, Any]
    onnx: OnnxSplit
    build_tiny: Callable[["Family", str, TinyParts], tuple[Any, Any]] = field(repr=False, compare=False)
    tiny_sizes: tuple[str, ...] = ("tiny", "small")
    gguf: GgufSupport = GgufSupport()  # svlm export --layout gguf

    def model_cls(self):
        import transformers

        return getattr(transformers, self.model_class)

    def image_token_id(self, tokenizer) -> int:
        """The id of the image placeholder in ``tokenizer`` (an error if the tokenizer lacks it)."""
        token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise SVLMError(f"the tokenizer has no {self.image_token!r} token, which {self.name} prompts need")
        return int(token_id)

    def image_spec(self, processor) -> dict:
        """The manifest's image-preprocessing spec for the torch-free runtime, read from ``processor``."""
        if self.onnx.image_spec is None:
            return {"kind": f"{self.name}_unported"}
        return self.onnx.image_spec(processor.image_processor)

    def apply_image_policy(self, processor) -> None:
        """Set the family's image policy on a loaded processor (idempotent).

        Keys are attribute paths on the image processor ("size.longest_edge"). Numbers are caps (a
        checkpoint that already asks for fewer pixels keeps its value); other values are set as they are.
        """
        for key, value in self.image_policy.items():
            *parents, last = key.split(".")
            obj = processor.image_processor
            for part in parents:
                obj = getattr(obj, part)
            current = getattr(obj, last, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and isinstance(current, (int, float)):
                value = min(current, value)
            setattr(obj, last, value)


# --- chat templates --------------------------------------------------------------------------------------
# Both accept string content and list content ({"type": "image"} / {"type": "text"}), and mark assistant
# text with {% generation %} so trl's assistant_only_loss works on tiny models too.
_CONTENT = (
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ IMG }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
)


def _chatml_template(image_placeholder: str) -> str:
    body = _CONTENT.replace("IMG", repr(image_placeholder))
    return (
        "{%- for message in messages -%}"
        "{{ '<|im_start|>' + message['role'] + '\\n' }}"
        "{%- if message['role'] == 'assistant' -%}{%- generation -%}" + body + "{{ '<|im_end|>' }}{%- endgeneration -%}"
        "{%- else -%}" + body + "{{ '<|im_end|>' }}{%- endif -%}"
        "{{ '\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
    )


def _smolvlm_template() -> str:
    body = _CONTENT.replace("IMG", repr("<image>"))
    return (
        "{{ '<|im_start|>' }}"
        "{%- for message in messages -%}"
        "{{ message['role'] | capitalize }}{{ ':' }}"
        "{%- if message['role'] == 'assistant' -%}{{ ' ' }}{%- generation -%}" + body
        + "{{ '<end_of_utterance>' }}{%- endgeneration -%}"
        "{%- else -%}" + body + "{{ '<end_of_utterance>' }}{%- endif -%}"
        "{{ '\\n' }}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ 'Assistant:' }}{%- endif -%}"
    )


# --- export: image features without data-dependent indexing ------------------------------------------
def _internvl_image_features(model, pixel_values):
    cfg = model.config
    return model.model.get_image_features(
        pixel_values=pixel_values, vision_feature_layer=cfg.vision_feature_layer,
        vision_feature_select_strategy=cfg.vision_feature_select_strategy).pooler_output


def _smolvlm_image_features(model, pixel_values):
    # SmolVLM's get_image_features drops all-zero padding images with boolean indexing; one image per
    # prompt (no splitting) has none, so call the tower and connector directly with a full patch mask.
    import torch

    patch = model.config.vision_config.patch_size
    mask = torch.ones(pixel_values.shape[0], pixel_values.shape[2] // patch, pixel_values.shape[3] // patch,
                      dtype=torch.bool, device=pixel_values.device)
    hidden = model.model.vision_model(pixel_values=pixel_values, patch_attention_mask=mask).last_hidden_state
    return model.model.connector(hidden)


def _qwen2vl_vision_graph(model):
    """Qwen2-VL's tower at any image grid; every block attends to the whole image."""
    from export.qwen_vision import vision_graph

    return vision_graph(model, windows=False)


def _qwen2_5_vl_vision_graph(model):
    """Qwen2.5-VL's tower at any image grid, window attention as a block mask (fullatt blocks: none)."""
    from export.qwen_vision import vision_graph

    return vision_graph(model, windows=True)


def _qwen_vl_graph_pixels(model, inputs):
    """The processor's flat patches of one image as the dynamic-grid vision graph takes them."""
    from export.qwen_vision import to_graph_input

    return to_graph_input(inputs["pixel_values"].numpy(), inputs["image_grid_thw"].numpy(),
                          model.config.vision_config.spatial_merge_size)


# --- export: the runtime's image preprocessing, read from the (policy-applied) image processor ------------
def _normalization(ip) -> dict:
    return {"resample": int(ip.resample), "rescale_factor": float(ip.rescale_factor),
            "mean": [float(x) for x in ip.image_mean], "std": [float(x) for x in ip.image_std]}


def _internvl_image_spec(ip) -> dict:
    """GotOcr2, one tile (the image policy): resize to height x width."""
    if ip.crop_to_patches:
        raise SVLMError("the runtime ports InternVL's single-tile preprocessing; crop_to_patches must be off")
    return {"kind": "resize_normalize", "height": ip.size.height, "width": ip.size.width, **_normalization(ip)}


def _smolvlm_image_spec(ip) -> dict:
    """SmolVLM without splitting (the image policy): longest edge to size, then a max_image_size square."""
    if ip.do_image_splitting:
        raise SVLMError("the runtime ports SmolVLM's single-image preprocessing; do_image_splitting must be off")
    size, square = ip.size, ip.max_image_size
    return {"kind": "longest_edge_square", "longest_edge": int(size["longest_edge"] if isinstance(size, dict)
                                                               else size.longest_edge),
            "side": int(square["longest_edge"]), **_normalization(ip)}


# --- GGUF: the processor's resize and llama.cpp's image-token budget, read from the image processor -------
def _ollama_chatml(default_system: str | None) -> str:
    """ChatML as an Ollama TEMPLATE; ``default_system``: the system turn the chat template adds when none is given."""
    fallback = f"{{{{ else }}}}<|im_start|>system\n{default_system}<|im_end|>\n" if default_system else ""
    return ("{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n" + fallback + "{{ end }}"
            "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
            "<|im_start|>assistant\n")


def _qwen2vl_gguf_resize(ip) -> dict:
    """Qwen2-VL's smart resize: sides multiples of patch x merge, the area within the size's pixel bounds."""
    return {"kind": "smart_resize", "factor": ip.patch_size * ip.merge_size, "min_pixels": int(ip.size.shortest_edge),
            "max_pixels": int(ip.size.longest_edge), "resample": int(ip.resample)}


def _qwen_vl_image_spec(ip) -> dict:
    """Qwen2-VL / Qwen2.5-VL: smart_resize within the (policy-capped) pixel bounds, then the patch grid."""
    return {"kind": "qwen_patches", "patch_size": int(ip.patch_size), "merge_size": int(ip.merge_size),
            "temporal_patch_size": int(ip.temporal_patch_size), "min_pixels": int(ip.size.shortest_edge),
            "max_pixels": int(ip.size.longest_edge), **_normalization(ip)}


def _qwen2vl_gguf_tokens(ip) -> tuple[int, int]:
    """One image token per merged patch: the pixel bounds divided by (patch x merge)²."""
    cell = (ip.patch_size * ip.merge_size) ** 2
    return int(ip.size.shortest_edge) // cell, int(ip.size.longest_edge) // cell


def _internvl_gguf_resize(ip) -> dict:
    """One tile (the image policy): the whole image resized to height x width."""
    if ip.crop_to_patches:
        raise SVLMError("the GGUF layout validates InternVL's single-tile policy; crop_to_patches must be off")
    return {"kind": "fixed", "height": int(ip.size.height), "width": int(ip.size.width), "resample": int(ip.resample)}


# --- tiny builders --------------------------------------------------------------------------------------
def _text_kwargs(s: dict, parts: TinyParts) -> dict:
    return dict(vocab_size=max(parts.vocab_size, s.get("vocab_pad", 0)), hidden_size=s["hidden"],
                intermediate_size=s["intermediate"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                num_key_value_heads=s["kv_heads"], max_position_embeddings=2048, bos_token_id=parts.bos_token_id,
                eos_token_id=parts.eos_token_id, pad_token_id=parts.pad_token_id)


def _lm_config(cls, s: dict, parts: TinyParts):
    """The language-model config shared by the InternVL (Qwen2) and SmolVLM (Llama) tiny builders."""
    return cls(**_text_kwargs(s, parts), tie_word_embeddings=False)


def _patch(side: int, s: dict) -> int:
    """The patch size that cuts a ``side``-pixel input into the size's ``grid`` x ``grid`` patches."""
    if side % s["grid"]:
        raise SVLMError(f"a {side}-pixel input does not split into a {s['grid']}x{s['grid']} patch grid")
    return side // s["grid"]


def _build_internvl(fam: Family, size: str, parts: TinyParts):
    import transformers as tf

    s = MODEL_SIZES[size]
    ip = parts.image_processor or dict(size={"height": s["grid"] * s["patch"], "width": s["grid"] * s["patch"]},
                                       max_patches=1, crop_to_patches=False)
    image_processor = tf.GotOcr2ImageProcessor(**ip)
    side = image_processor.size.height
    image_seq = s["grid"] ** 2 // 4  # pixel shuffle with downsample_ratio 0.5
    text = _lm_config(tf.Qwen2Config, s, parts)
    vision = tf.InternVLVisionConfig(hidden_size=s["v_hidden"], intermediate_size=s["v_intermediate"],
                                     num_hidden_layers=s["v_layers"], num_attention_heads=s["v_heads"],
                                     image_size=[side] * 2, patch_size=[_patch(side, s)] * 2)
    config = tf.InternVLConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                               image_token_id=fam.image_token_id(parts.tokenizer), image_seq_length=image_seq,
                               tie_word_embeddings=False)
    processor = tf.InternVLProcessor(image_processor=image_processor, tokenizer=parts.tokenizer,
                                     video_processor=tf.InternVLVideoProcessor(), image_seq_length=image_seq,
                                     chat_template=parts.chat_template)
    return config, processor


def _build_smolvlm(fam: Family, size: str, parts: TinyParts):
    import transformers as tf

    s = MODEL_SIZES[size]
    edge = {"longest_edge": s["grid"] * s["patch"]}
    ip = parts.image_processor or dict(size=edge, max_image_size=edge, do_image_splitting=False)
    image_processor = tf.SmolVLMImageProcessor(**ip)
    side = image_processor.max_image_size["longest_edge"]  # what the vision tower sees, split or not
    scale = 2
    image_seq = s["grid"] ** 2 // scale**2
    text = _lm_config(tf.LlamaConfig, s, parts)
    vision = tf.SmolVLMVisionConfig(hidden_size=s["v_hidden"], intermediate_size=s["v_intermediate"],
                                    num_hidden_layers=s["v_layers"], num_attention_heads=s["v_heads"],
                                    image_size=side, patch_size=_patch(side, s))
    config = tf.SmolVLMConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                              image_token_id=fam.image_token_id(parts.tokenizer), scale_factor=scale,
                              pad_token_id=parts.pad_token_id, tie_word_embeddings=False)
    processor = tf.SmolVLMProcessor(image_processor=image_processor, tokenizer=parts.tokenizer,
                                    video_processor=tf.SmolVLMVideoProcessor(), image_seq_len=image_seq,
                                    chat_template=parts.chat_template)
    return config, processor


def _build_qwen_vl(fam: Family, size: str, parts: TinyParts, config_cls: str, processor_cls: str,
                   vision_extra: Callable[[dict, int, int], dict]):
    """Qwen2-VL and Qwen2.5-VL: the same M-RoPE text model, image processor and token ids; ``vision_extra``
    (sizes, patch, merge) -> the vision config's family-specific keys."""
    import transformers as tf

    s = MODEL_SIZES[size]
    head_dim = s["hidden"] // s["heads"]
    # M-RoPE splits the rotary half-dimension into temporal/height/width sections: 1/4, 3/8, 3/8 as in
    # Qwen2-VL-2B's [16, 24, 24] for head_dim 128.
    half = head_dim // 2
    mrope = [half // 4, 3 * half // 8, half - half // 4 - 3 * half // 8]
    text = dict(**_text_kwargs(s, parts), rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                           "mrope_section": mrope})
    # Qwen2-VL's processor sizes the image grid from the input (min/max pixels) in its patch size, which the
    # tower must share: the real processor keeps its 14-pixel patches and the tiny cost follows the image.
    pixels = (s["grid"] * s["patch"]) ** 2
    ip = parts.image_processor or dict(patch_size=s["patch"], merge_size=2, temporal_patch_size=2,
                                       min_pixels=pixels, max_pixels=pixels)
    image_processor = tf.Qwen2VLImageProcessor(**ip)
    patch, merge = image_processor.patch_size, image_processor.merge_size
    vision = dict(num_heads=s["v_heads"], patch_size=patch, spatial_merge_size=merge,
                  temporal_patch_size=image_processor.temporal_patch_size, **vision_extra(s, patch, merge))
    tok = parts.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    config = getattr(tf, config_cls)(text_config=text, vision_config=vision, image_token_id=fam.image_token_id(tok),
                                     video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                                     vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    video_processor = tf.Qwen2VLVideoProcessor(patch_size=patch, merge_size=merge,
                                               temporal_patch_size=image_processor.temporal_patch_size)
    processor = getattr(tf, processor_cls)(image_processor=image_processor, tokenizer=tok,
                                           video_processor=video_processor, chat_template=parts.chat_template)
    return config, processor


def _build_qwen2vl(fam: Family, size: str, parts: TinyParts):
    return _build_qwen_vl(fam, size, parts, "Qwen2VLConfig", "Qwen2VLProcessor", lambda s, patch, merge: dict(
        depth=s["v_layers"], embed_dim=s["v_hidden"], hidden_size=s["hidden"], mlp_ratio=2))


def _qwen2_5_vl_vision(s: dict, patch: int, merge: int) -> dict:
    """Qwen2.5-VL's tower: SwiGLU blocks, RMSNorm, window attention in all blocks but ``fullatt_block_indexes``
    (Qwen2.5-VL-3B: windows of 112 pixels = 4 x 4 merged patches at patch 14, full attention in every 8th
    block). The tiny tower keeps the 4 x 4 merged-patch windows and has at least two blocks, the last one
    full, so that both kinds of attention are built and exported."""
    depth = max(2, s["v_layers"])
    return dict(depth=depth, hidden_size=s["v_hidden"], intermediate_size=s["v_intermediate"],
                out_hidden_size=s["hidden"], window_size=4 * merge * patch, fullatt_block_indexes=[depth - 1])


def _build_qwen2_5_vl(fam: Family, size: str, parts: TinyParts):
    return _build_qwen_vl(fam, size, parts, "Qwen2_5_VLConfig", "Qwen2_5_VLProcessor", _qwen2_5_vl_vision)


_CHATML = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family(
            name="internvl",
            model_types=("internvl",),
            model_class="InternVLForConditionalGeneration",
            processor_class="InternVLProcessor",
            image_processor_class="GotOcr2ImageProcessor",
            video_processor_class="InternVLVideoProcessor",
            hub_examples=("OpenGVLab/InternVL3-1B-hf", "OpenGVLab/InternVL3-2B-hf"),
            image_token="<IMG_CONTEXT>",
            # Files derived from the Qwen2.5 tokenizer by transformers' conversion recipe (PROVENANCE.md);
            # the hub config's text vocab is 151,674 rows (the derived tokenizer lists ids up to 151,674).
            real=RealCheckpoint("OpenGVLab/InternVL3-1B-hf", "internvl3-1b-hf", vocab_size=151674),
            chat_template=_chatml_template("<IMG_CONTEXT>\n"),
            special_tokens=_CHATML + ("<img>", "</img>", "<IMG_CONTEXT>", "<video>"),
            tokenizer_attrs={"start_image_token": "<img>", "end_image_token": "</img>",
                             "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"},
            eos_token="<|im_end|>", pad_token="<|endoftext|>",
            lora_target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
            skip_4bit_modules=("model.vision_tower", "model.multi_modal_projector", "lm_head"),
            # One 448x448 tile (256 tokens) on InternVL3 instead of up to 12 tiles + thumbnail.
            image_policy={"crop_to_patches": False, "max_patches": 1},
            onnx=OnnxSplit(vision="model.vision_tower", projector="model.multi_modal_projector",
                           image_features=_internvl_image_features, image_spec=_internvl_image_spec,
                           transformers_js_unsupported=(
                               "transformers.js 4.3.1 has no InternVL model class (its registry maps no "
                               "'internvl' model type) and no processor that expands <IMG_CONTEXT>; export the "
                               "svlm layout, or a SmolVLM model, for the browser")),
            build_tiny=_build_internvl,
            # transformers' InternVL layout is not registered in llama.cpp's converter: the staged copy names the
            # original InternVL's classes and tensor prefixes (without the prefixes the mmproj file is written
            # with 0 tensors and no error), and one dynamic patch (llama.cpp would add tiles and a thumbnail)
            gguf=GgufSupport(image_text="<IMG_CONTEXT>", resize=_internvl_gguf_resize,
                             ollama_template=_ollama_chatml(None),
                             architectures=(("text_config", "Qwen2ForCausalLM"), ("vision_config", "InternVisionModel")),
                             config=(("min_dynamic_patch", 1), ("max_dynamic_patch", 1)),
                             tensor_prefixes=(("vision_tower.", "model.vision_tower."),
                                              ("multi_modal_projector.", "model.multi_modal_projector.")),
                             unsupported=None),
        ),
        Family(
            name="smolvlm",
            model_types=("smolvlm", "idefics3"),
            model_class="SmolVLMForConditionalGeneration",
            processor_class="SmolVLMProcessor",
            image_processor_class="SmolVLMImageProcessor",
            video_processor_class="SmolVLMVideoProcessor",
            hub_examples=("HuggingFaceTB/SmolVLM-256M-Instruct", "HuggingFaceTB/SmolVLM-500M-Instruct",
                          "HuggingFaceTB/SmolVLM2-2.2B-Instruct"),
            image_token="<image>",
            real=RealCheckpoint("HuggingFaceTB/SmolVLM-256M-Instruct", "smolvlm-256m-instruct", vocab_size=49280),
            chat_template=_smolvlm_template(),
            special_tokens=("<|endoftext|>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>",
                            "<image>", "<global-img>", "<video>"),
            tokenizer_attrs={"fake_image_token": "<fake_token_around_image>", "image_token": "<image>",
                             "end_of_utterance_token": "<end_of_utterance>", "global_image_token": "<global-img>"},
            eos_token="<end_of_utterance>", pad_token="<|endoftext|>",
            lora_target_modules=r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
            skip_4bit_modules=("model.vision_model", "model.connector", "lm_head"),
            # A single global image (64 tokens on SmolVLM-256M) instead of a grid of 512px crops.
            image_policy={"do_image_splitting": False},
            onnx=OnnxSplit(vision="model.vision_model", projector="model.connector", text_model="model.text_model",
                           image_features=_smolvlm_image_features, image_spec=_smolvlm_image_spec,
                           transformers_js_unsupported=None),  # its Idefics3 / SmolVLM classes
            build_tiny=_build_smolvlm,
            gguf=GgufSupport(unsupported=(
                "SmolVLM has no GGUF export: llama.cpp always sends its images as a thumbnail plus tiles and puts "
                "\"\\n\\n\" before them, so its prompt cannot equal the one the model was trained and validated on")),
        ),
        Family(
            name="qwen2vl",
            model_types=("qwen2_vl",),
            model_class="Qwen2VLForConditionalGeneration",
            processor_class="Qwen2VLProcessor",
            image_processor_class="Qwen2VLImageProcessor",
            video_processor_class="Qwen2VLVideoProcessor",
            hub_examples=("Qwen/Qwen2-VL-2B-Instruct",),
            image_token="<|image_pad|>",
            real=RealCheckpoint("Qwen/Qwen2-VL-2B-Instruct", "qwen2-vl-2b-instruct", vocab_size=151936),
            chat_template=_chatml_template("<|vision_start|><|image_pad|><|vision_end|>"),
            special_tokens=_CHATML + ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
            tokenizer_attrs={},
            eos_token="<|im_end|>", pad_token="<|endoftext|>",
            lora_target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
            skip_4bit_modules=("model.visual", "lm_head"),
            # At most 448x448 pixels = 256 visual tokens after the 2x2 merge.
            image_policy={"size.longest_edge": 448 * 448},
            onnx=OnnxSplit(vision="model.visual", projector="model.visual.merger",
                           vision_graph=_qwen2vl_vision_graph, graph_pixels=_qwen_vl_graph_pixels,
                           positions="mrope", image_spec=_qwen_vl_image_spec),
            build_tiny=_build_qwen2vl,
            # converts as it is; llama.cpp budgets 8-4096 image tokens unless told the policy's bounds
            gguf=GgufSupport(image_text="<|vision_start|><|image_pad|><|vision_end|>", resize=_qwen2vl_gguf_resize,
                             image_tokens=_qwen2vl_gguf_tokens, unsupported=None,
                             ollama_template=_ollama_chatml("You are a helpful assistant.")),
        ),
        Family(
            name="qwen2_5_vl",
            model_types=("qwen2_5_vl",),
            model_class="Qwen2_5_VLForConditionalGeneration",
            processor_class="Qwen2_5_VLProcessor",
            image_processor_class="Qwen2VLImageProcessor",
            video_processor_class="Qwen2VLVideoProcessor",
            hub_examples=("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"),
            image_token="<|image_pad|>",
            # Qwen2.5-VL-3B-Instruct's config.json: vocab_size 151936, image_token_id 151655 (the Qwen2.5
            # tokenizer's <|image_pad|>); its files in factory/assets/hf (PROVENANCE.md): the Qwen2.5 tokenizer,
            # the Qwen2-VL chat template it ships verbatim, min/max pixels 3136 / 12845056, patch 14, merge 2
            real=RealCheckpoint("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2.5-vl-3b-instruct", vocab_size=151936),
            chat_template=_chatml_template("<|vision_start|><|image_pad|><|vision_end|>"),
            special_tokens=_CHATML + ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
            tokenizer_attrs={},
            eos_token="<|im_end|>", pad_token="<|endoftext|>",
            lora_target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
            skip_4bit_modules=("model.visual", "lm_head"),
            # At most 448x448 pixels = 256 visual tokens after the 2x2 merge, as for Qwen2-VL.
            image_policy={"size.longest_edge": 448 * 448},
            onnx=OnnxSplit(vision="model.visual", projector="model.visual.merger",
                           vision_graph=_qwen2_5_vl_vision_graph, graph_pixels=_qwen_vl_graph_pixels,
                           positions="mrope", image_spec=_qwen_vl_image_spec, genai_type="qwen2_5_vl"),
            build_tiny=_build_qwen2_5_vl,
        ),
    ]
}


def get_family(name: str) -> Family:
    """Look a family up by registry name."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise SVLMError(f"unknown model family {name!r}; registered: {', '.join(FAMILIES)}") from None


def family_of(config) -> Family:
    """The family of a loaded HF config (``config.model_type``)."""
    for fam in FAMILIES.values():
        if config.model_type in fam.model_types:
            return fam
    known = sorted(t for f in FAMILIES.values() for t in f.model_types)
    raise SVLMError(f"model type {config.model_type!r} is not a registered family; supported model types: {known}")
