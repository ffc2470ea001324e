"""In-process vision-language backend: image-text-to-text models from transformers.

Prompts mix text and image parts (key frames, covers); images arrive as ``data:`` URLs
(:meth:`ImagePart.from_path`, :func:`agents.keyframes.frames_to_image_parts`) and are decoded
here. The processor renders the chat template, expands each image into the model's image tokens
and batches with left padding, like the text-only ``hf`` backend.
"""

from __future__ import annotations

import base64
import binascii
import io
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from vragent.agents.backends.base import (
    ChatPrompt,
    Generation,
    ImagePart,
    LLMBackend,
    Score,
    TextPart,
    renormalise,
)
from vragent.agents.backends.loading import (
    option_first_tokens,
    resolve_device,
    sampling_kwargs,
    weights_dtype,
)


class HFVisionBackend(LLMBackend):
    """An image-text-to-text model (SmolVLM, Qwen2-VL, LLaVA, ...) run in this process.

    Args:
        model_path: a transformers model folder, loaded with ``AutoProcessor`` and
            ``AutoModelForImageTextToText``.
        model: an already built model (tests pass tiny randomly initialised ones).
        processor: its processor (tokenizer, image processor, chat template); required with
            ``model``.
        model_name: the id stored with decisions; defaults to the folder name.
        batch_size: prompts per forward pass.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        dtype: weights' dtype when loading from ``model_path``: ``"auto"`` is float32 on CPU
            and bfloat16 on GPU; or ``"float32"``, ``"bfloat16"``, ``"float16"``.

    Prompts are not truncated: cutting a prompt could cut an image's tokens apart, which the
    model cannot take. Keep prompts (and the number of images) within the model's context.
    """

    kind = "hf-vision"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        model: Any = None,
        processor: Any = None,
        model_name: str | None = None,
        batch_size: int = 4,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        self.device = resolve_device(device)
        if model is None:
            if model_path is None:
                raise ValueError("HFVisionBackend needs model_path or model")
            from transformers import AutoModelForImageTextToText, AutoProcessor
            from vragent.agents.backends.hf_bars import quiet_hf_bars_outside_terminal

            quiet_hf_bars_outside_terminal()  # "Loading weights" bars stay out of logs
            processor = AutoProcessor.from_pretrained(str(model_path))
            model = AutoModelForImageTextToText.from_pretrained(
                str(model_path), dtype=weights_dtype(dtype, self.device))
        elif processor is None:
            raise ValueError("HFVisionBackend(model=...) needs processor=")
        self.model = model.to(self.device).eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # Left padding keeps every prompt's last token at the end, where generation starts.
        self.tokenizer.padding_side = "left"
        self.batch_size = batch_size
        self._model_id = model_name or (Path(model_path).name if model_path else "in-memory")
        self._option_ids: dict[tuple[str, ...], dict[str, list[int]]] = {}

    @property
    def model_id(self) -> str:
        """The model's stored name."""
        return self._model_id

    # ------------------------------------------------------------------ helpers

    def render(self, prompt: ChatPrompt) -> str:
        """The exact text the processor sees: chat template, then the assistant prefix.

        Each image part becomes one ``{"type": "image"}`` entry, which the template writes as
        the model's image marker and the processor expands into the image's tokens.
        """
        messages = [{"role": role, "content": _content_dicts(content)}
                    for role, content in prompt.messages]
        templater = self.processor if getattr(self.processor, "chat_template", None) else (
            self.tokenizer)
        text = templater.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
        return text + prompt.assistant_prefix

    def _encode(self, prompts: Sequence[ChatPrompt]) -> Any:
        texts = [self.render(p) for p in prompts]
        images = [[decode_image(p) for _, c in pr.messages if not isinstance(c, str)
                   for p in c if isinstance(p, ImagePart)] for pr in prompts]
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
        if any(images):
            kwargs["images"] = images  # one list per prompt; text-only prompts give []
        enc = self.processor(**kwargs)
        dtype = next(self.model.parameters()).dtype
        # Pixels follow the weights' dtype (bf16 on GPU); ids and masks stay integers.
        return {k: v.to(self.device, dtype) if torch.is_floating_point(v) else v.to(self.device)
                for k, v in enc.items() if isinstance(v, torch.Tensor)}

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids |= set(gen_eos) if isinstance(gen_eos, list | tuple) else {gen_eos}
        return {i for i in ids if i is not None}

    def _option_token_ids(self, options: Sequence[str]) -> dict[str, list[int]]:
        key = tuple(options)
        if key not in self._option_ids:
            self._option_ids[key] = option_first_tokens(self.tokenizer, options)
        return self._option_ids[key]

    # ------------------------------------------------------------------ API

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[ChatPrompt],
        *,
        max_new_tokens: int = 96,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int = 0,
    ) -> list[Generation]:
        """Sample completions in batches of ``batch_size`` (see :class:`LLMBackend`).

        ``tokens_in`` counts the prompt as the model sees it, image tokens included.

        Raises:
            ValueError: an image part is an http(s) URL (not fetched) or not a decodable image.
        """
        out: list[Generation] = []
        eos = self._eos_ids()
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            enc = self._encode(chunk)
            # One seed per chunk: reruns (and resumed runs) see identical samples.
            torch.manual_seed(seed + start)
            t0 = time.perf_counter()
            seqs = self.model.generate(**enc, **sampling_kwargs(
                max_new_tokens, temperature, top_p, self.tokenizer.pad_token_id))
            latency = (time.perf_counter() - t0) / len(chunk)
            new = seqs[:, enc["input_ids"].shape[1] :]
            for row in range(len(chunk)):
                toks = new[row].tolist()
                stop = next((j for j, t in enumerate(toks) if t in eos), None)
                if stop is not None:
                    toks = toks[: stop + 1]
                out.append(Generation(
                    text=self.tokenizer.decode(toks, skip_special_tokens=True),
                    tokens_in=int(enc["attention_mask"][row].sum()),
                    tokens_out=len(toks),
                    latency_s=latency,
                ))
        return out

    @torch.inference_mode()
    def score(
        self, prompts: Sequence[ChatPrompt], options: Sequence[str] = ("Yes", "No")
    ) -> list[Score]:
        """Option probabilities after each prompt (see :class:`LLMBackend`).

        The logits of the first generated position: ``generate`` builds each architecture's
        position ids (left padding, multimodal rotary positions), which a bare forward would
        leave to the caller. No prefix reuse.
        """
        table = self._option_token_ids(options)
        out: list[Score] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            enc = self._encode(chunk)
            t0 = time.perf_counter()
            res = self.model.generate(
                **enc, max_new_tokens=1, do_sample=False, output_logits=True,
                return_dict_in_generate=True, pad_token_id=self.tokenizer.pad_token_id,
            )
            logits = res.logits[0].float()
            latency = (time.perf_counter() - t0) / len(chunk)
            for row in range(len(chunk)):
                opt = {name: float(torch.logsumexp(logits[row, ids], dim=0))
                       for name, ids in table.items()}
                out.append(Score(probs=renormalise(opt), logits=opt,
                                 tokens_in=int(enc["attention_mask"][row].sum()),
                                 latency_s=latency))
        return out


def _content_dicts(content: str | tuple) -> list[dict[str, str]]:
    """Message content in the processors' layout: ``{"type": "image"}`` marks an image's place.

    Text-only contents become lists too: multimodal chat templates expect lists everywhere.
    """
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [{"type": "text", "text": p.text} if isinstance(p, TextPart) else {"type": "image"}
            for p in content]


def decode_image(part: ImagePart) -> Any:
    """An image part's picture as an RGB PIL image.

    Raises:
        ValueError: an http(s) URL (this backend never fetches), or data that is not an image.
    """
    from PIL import Image

    if not part.url.startswith("data:"):
        raise ValueError(f"the hf-vision backend does not fetch image URLs ({part.url[:60]}); "
                         "pass images as data: URLs (ImagePart.from_path)")
    header, _, payload = part.url.partition(",")
    try:
        raw = (base64.b64decode(payload) if header.endswith(";base64")
               else urllib.parse.unquote_to_bytes(payload))
        with Image.open(io.BytesIO(raw)) as im:
            return im.convert("RGB")
    except (binascii.Error, OSError, ValueError) as e:
        raise ValueError(f"image part {part.url[:40]}...: not a decodable image "
                         f"({type(e).__name__})") from e
