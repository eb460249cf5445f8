"""The one model-family registry: every per-family difference lives in one frozen ``Family`` entry.

Code elsewhere asks the registry (``get_family``, ``family_of``) instead of branching on a family name.
An entry holds the HF model/processor classes (by name, resolved lazily so importing this module stays
cheap), the chat template used for tiny models, the LoRA targets, the image-size policy applied to the
processor, the ONNX split used by ``export/``, and the tiny test configs. ``tests/test_families.py``
fails when a registered family has no tiny config.

Families: InternVL (HF-native ``InternVLForConditionalGeneration``, InternVL3-1B-hf; the default),
SmolVLM (Idefics3 lineage, SmolVLM-256M/500M/2.2B), Qwen2-VL (Qwen2-VL-2B-Instruct).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from factory.errors import SVLMError

DEFAULT_FAMILY = "internvl"

# Sizes of the random-weight models. "tiny" is for unit tests; "small" (~10M parameters) is the default
# for learning runs on a 2-core CPU. Every Linear that bitsandbytes may quantize has in_features % 64 == 0
# (DESIGN.md §3), so the 4-bit path is testable on CPU.
TINY_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden=64, intermediate=128, layers=2, heads=2, kv_heads=1, vocab=1024,
                 v_hidden=64, v_intermediate=128, v_layers=1, v_heads=2, image=32, patch=8),
    "small": dict(hidden=256, intermediate=768, layers=6, heads=4, kv_heads=2, vocab=4096,
                  v_hidden=256, v_intermediate=512, v_layers=4, v_heads=4, image=96, patch=12),
}

# Real-size shapes with random weights, for GPU memory/throughput checks (benchmarks/). The tokenizer is
# still the small local BPE; ``vocab_pad`` pads the embedding and head to the real vocabulary so their
# memory is real. InternVL3-1B: InternViT-300M (24 x 1024) + Qwen2.5-0.5B (24 x 896); -2B: + Qwen2.5-1.5B.
REAL_SHAPES: dict[str, dict[str, int]] = {
    "internvl3-1b-shape": dict(hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2, vocab=4096,
                               vocab_pad=151674, v_hidden=1024, v_intermediate=4096, v_layers=24, v_heads=16,
                               image=448, patch=14),
    "internvl3-2b-shape": dict(hidden=1536, intermediate=8960, layers=28, heads=12, kv_heads=2, vocab=4096,
                               vocab_pad=151674, v_hidden=1024, v_intermediate=4096, v_layers=24, v_heads=16,
                               image=448, patch=14),
}
MODEL_SIZES: dict[str, dict[str, int]] = {**TINY_SIZES, **REAL_SHAPES}


@dataclass(frozen=True)
class OnnxSplit:
    """How ``export/`` cuts a family into graphs (vision encoder + projector, embeddings, decoder with KV)."""

    vision: str  # attribute path of the vision tower module on the HF model
    projector: str  # attribute path of the multimodal projector
    embed: str = "get_input_embeddings"
    text_model: str = "model.language_model"  # attribute path of the decoder stack (without the head)
    fixed_image_grid: bool = False  # True where only one image grid exports (Qwen2-VL, DESIGN.md §3)
    # pixel_values [n_images, 3, H, W] -> projected image features [n_images, tokens, hidden]; called on the
    # HF model inside the exported vision graph, so it must avoid data-dependent indexing.
    image_features: Callable[[Any, Any], Any] | None = None
    unsupported: str | None = None  # why `svlm export` refuses this family (None: supported)
    tolerance: float = 1e-4  # fp32 ONNX vs PyTorch: max |Δlogits| the export accepts


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
    chat_template: str  # for tiny models; real checkpoints ship their own
    special_tokens: tuple[str, ...]  # tokens the processor needs in the tokenizer
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
    build_tiny: Callable[["Family", str, Any], tuple[Any, Any]] = field(repr=False, compare=False)
    tiny_sizes: tuple[str, ...] = ("tiny", "small")

    def model_cls(self):
        import transformers

        return getattr(transformers, self.model_class)

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


# --- tiny builders --------------------------------------------------------------------------------------
def _text_kwargs(s: dict, vocab: int) -> dict:
    return dict(vocab_size=max(vocab, s.get("vocab_pad", 0)), hidden_size=s["hidden"], intermediate_size=s["intermediate"],
                num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                num_key_value_heads=s["kv_heads"], max_position_embeddings=2048)


def _lm_config(cls, s: dict, tok):
    """The language-model config shared by the InternVL (Qwen2) and SmolVLM (Llama) tiny builders."""
    return cls(**_text_kwargs(s, len(tok)), tie_word_embeddings=False, bos_token_id=tok.pad_token_id,
               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)


def _build_internvl(fam: Family, size: str, tok):
    import transformers as tf

    s = MODEL_SIZES[size]
    image_seq = (s["image"] // s["patch"]) ** 2 // 4  # pixel shuffle with downsample_ratio 0.5
    text = _lm_config(tf.Qwen2Config, s, tok)
    vision = tf.InternVLVisionConfig(hidden_size=s["v_hidden"], intermediate_size=s["v_intermediate"],
                                     num_hidden_layers=s["v_layers"], num_attention_heads=s["v_heads"],
                                     image_size=[s["image"]] * 2, patch_size=[s["patch"]] * 2)
    config = tf.InternVLConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                               image_token_id=tok.context_image_token_id, image_seq_length=image_seq,
                               tie_word_embeddings=False)
    image_processor = tf.GotOcr2ImageProcessor(size={"height": s["image"], "width": s["image"]},
                                               max_patches=1, crop_to_patches=False)
    processor = tf.InternVLProcessor(image_processor=image_processor, tokenizer=tok,
                                     video_processor=tf.InternVLVideoProcessor(), image_seq_length=image_seq,
                                     chat_template=fam.chat_template)
    return config, processor


def _build_smolvlm(fam: Family, size: str, tok):
    import transformers as tf

    s = MODEL_SIZES[size]
    scale = 2
    image_seq = (s["image"] // s["patch"]) ** 2 // scale**2
    text = _lm_config(tf.LlamaConfig, s, tok)
    vision = tf.SmolVLMVisionConfig(hidden_size=s["v_hidden"], intermediate_size=s["v_intermediate"],
                                    num_hidden_layers=s["v_layers"], num_attention_heads=s["v_heads"],
                                    image_size=s["image"], patch_size=s["patch"])
    config = tf.SmolVLMConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                              image_token_id=tok.convert_tokens_to_ids("<image>"), scale_factor=scale,
                              pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    edge = {"longest_edge": s["image"]}
    image_processor = tf.SmolVLMImageProcessor(size=edge, max_image_size=edge, do_image_splitting=False)
    processor = tf.SmolVLMProcessor(image_processor=image_processor, tokenizer=tok,
                                    video_processor=tf.SmolVLMVideoProcessor(), image_seq_len=image_seq,
                                    chat_template=fam.chat_template)
    return config, processor


def _build_qwen2vl(fam: Family, size: str, tok):
    import transformers as tf

    s = MODEL_SIZES[size]
    head_dim = s["hidden"] // s["heads"]
    # M-RoPE splits the rotary half-dimension into temporal/height/width sections: 1/4, 3/8, 3/8 as in
    # Qwen2-VL-2B's [16, 24, 24] for head_dim 128.
    half = head_dim // 2
    mrope = [half // 4, 3 * half // 8, half - half // 4 - 3 * half // 8]
    text = dict(**_text_kwargs(s, len(tok)), rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                              "mrope_section": mrope},
                bos_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    vision = dict(depth=s["v_layers"], embed_dim=s["v_hidden"], hidden_size=s["hidden"], num_heads=s["v_heads"],
                  patch_size=s["patch"], spatial_merge_size=2, temporal_patch_size=2, mlp_ratio=2)
    ids = {t: tok.convert_tokens_to_ids(t) for t in fam.special_tokens}
    config = tf.Qwen2VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                              video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False)
    pixels = s["image"] * s["image"]
    image_processor = tf.Qwen2VLImageProcessor(patch_size=s["patch"], merge_size=2, temporal_patch_size=2,
                                               min_pixels=pixels, max_pixels=pixels)
    video_processor = tf.Qwen2VLVideoProcessor(patch_size=s["patch"], merge_size=2, temporal_patch_size=2)
    processor = tf.Qwen2VLProcessor(image_processor=image_processor, tokenizer=tok,
                                    video_processor=video_processor, chat_template=fam.chat_template)
    return config, processor


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
                           image_features=_internvl_image_features),
            build_tiny=_build_internvl,
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
                           image_features=_smolvlm_image_features),
            build_tiny=_build_smolvlm,
        ),
        Family(
            name="qwen2vl",
            model_types=("qwen2_vl",),
            model_class="Qwen2VLForConditionalGeneration",
            processor_class="Qwen2VLProcessor",
            image_processor_class="Qwen2VLImageProcessor",
            video_processor_class="Qwen2VLVideoProcessor",
            hub_examples=("Qwen/Qwen2-VL-2B-Instruct",),
            chat_template=_chatml_template("<|vision_start|><|image_pad|><|vision_end|>"),
            special_tokens=_CHATML + ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"),
            tokenizer_attrs={},
            eos_token="<|im_end|>", pad_token="<|endoftext|>",
            lora_target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
            skip_4bit_modules=("model.visual", "lm_head"),
            # At most 448x448 pixels = 256 visual tokens after the 2x2 merge.
            image_policy={"size.longest_edge": 448 * 448},
            onnx=OnnxSplit(vision="model.visual", projector="model.visual.merger", fixed_image_grid=True,
                           unsupported="Qwen2-VL export is not supported yet: its vision encoder exports only at "
                                       "one fixed image grid and its M-RoPE positions need a runtime port"),
            build_tiny=_build_qwen2vl,
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
