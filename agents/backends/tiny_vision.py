"""Tiny randomly initialised vision models: a CLIP scorer and a LLaVA-style VLM.

Like :mod:`agents.backends.tiny`, for tests and smoke runs without a model hub: real
transformers architectures with a few hundred thousand random weights, built in about a second.
They exercise every code path of key-frame retrieval and of the ``hf-vision`` backend (image
preprocessing, image-token expansion, chat templates, left padding, option scoring).
"""

from __future__ import annotations

from typing import Any

from vragent.agents.backends.tiny import build_tiny_tokenizer

IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 32
PATCH_SIZE = 16
#: Image tokens per image in the tiny VLM: (32 / 16)² patches (its CLS token is dropped).
TOKENS_PER_IMAGE = (IMAGE_SIZE // PATCH_SIZE) ** 2

#: Like the tiny text model's template, with ``{"type": "image"}`` parts as ``<image>``.
VISION_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for p in m['content'] %}"
    "{% if p['type'] == 'image' %}" + IMAGE_TOKEN + "{% else %}{{ p['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _image_processor() -> Any:
    try:  # transformers >= 5.x: the PIL processor needs no torchvision
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # pragma: no cover (older transformers)
        from transformers import CLIPImageProcessor as ImageProcessor
    return ImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                          crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def _vision_config() -> dict[str, Any]:
    return {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE}


def build_tiny_clip(seed: int = 0) -> tuple[Any, Any]:
    """A randomly initialised ``CLIPModel`` (hidden 32, 2 layers) and its ``CLIPProcessor``.

    The tokenizer appends ``<|end|>`` and the text tower pools there, so the text embedding
    depends on the whole title (as CLIP's does on its end token).
    """
    import torch
    from tokenizers import processors
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    tok = build_tiny_tokenizer()
    end = tok.convert_tokens_to_ids("<|end|>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <|end|>", special_tokens=[("<|end|>", end)])
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2,
                     "max_position_embeddings": 64, "pad_token_id": tok.pad_token_id,
                     "bos_token_id": tok.bos_token_id, "eos_token_id": end},
        vision_config=_vision_config(),
        projection_dim=16,
    )
    model = CLIPModel(cfg).eval()
    return model, CLIPProcessor(image_processor=_image_processor(), tokenizer=tok)


def tiny_clip_scorer(seed: int = 0):
    """A :class:`~agents.keyframes.ClipScorer` over a tiny random CLIP."""
    from vragent.agents.keyframes import ClipScorer

    model, processor = build_tiny_clip(seed)
    return ClipScorer(model, processor, device="cpu", model_name=f"tiny-random-clip-s{seed}")


def build_tiny_vlm(seed: int = 0) -> tuple[Any, Any]:
    """A randomly initialised ``LlavaForConditionalGeneration`` and its ``LlavaProcessor``.

    A 2-layer CLIP vision tower (32×32 images, 16×16 patches: :data:`TOKENS_PER_IMAGE` image
    tokens per image) in front of the tiny 2-layer Llama of :mod:`agents.backends.tiny`, whose
    tokenizer gains an ``<image>`` token.
    """
    import torch
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    tok = build_tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tok.chat_template = VISION_CHAT_TEMPLATE
    processor = LlavaProcessor(
        image_processor=_image_processor(), tokenizer=tok, patch_size=PATCH_SIZE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=VISION_CHAT_TEMPLATE, image_token=IMAGE_TOKEN,
    )
    torch.manual_seed(seed)
    # Untied output head: with tied embeddings a tiny random Llama repeats its last input token
    # (here ``<|assistant|>``, a special token), so every completion would decode to "".
    cfg = LlavaConfig(
        vision_config={"model_type": "clip_vision_model", **_vision_config()},
        text_config={"model_type": "llama", "vocab_size": len(tok), "hidden_size": 64,
                     "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "max_position_embeddings": 4096,
                     "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
                     "eos_token_id": tok.eos_token_id, "tie_word_embeddings": False},
        image_token_id=processor.image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    return LlavaForConditionalGeneration(cfg).eval(), processor


def tiny_vision_backend(seed: int = 0, batch_size: int = 4):
    """An :class:`~agents.backends.hf_vision.HFVisionBackend` over a tiny random LLaVA."""
    from vragent.agents.backends.hf_vision import HFVisionBackend

    model, processor = build_tiny_vlm(seed)
    return HFVisionBackend(model=model, processor=processor, batch_size=batch_size,
                           model_name=f"tiny-random-llava-s{seed}", device="cpu")
