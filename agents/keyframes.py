"""Key-frame retrieval (KFR), the first stage of the item-perception agent.

Sample a few frames of a video (a folder of frame images, as MicroLens ships them, or a video
file decoded with PyAV), score each against the title with CLIP, keep the most title-like ones,
and turn them into :class:`~agents.backends.base.ImagePart` s for a vision-language prompt.

PIL and numpy are light; torch, transformers and av are imported only where they are used.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from vragent.agents.backends.base import ImagePart

if TYPE_CHECKING:
    from PIL.Image import Image

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".webm", ".mkv", ".avi", ".m4v"})


@dataclass(frozen=True)
class Frame:
    """One sampled frame.

    Attributes:
        index: its position in the source (frame number of a video, position of the file in
            the sorted folder), so frames sort in time order.
        label: the file name, or the timestamp (``"3.20s"``) of a video frame.
        image: the frame as an RGB PIL image.
        path: the image file it came from, or ``None`` for a decoded video frame.
    """

    index: int
    label: str
    image: Image
    path: Path | None = None


@dataclass(frozen=True)
class KeyFrame:
    """A frame kept by :func:`select_key_frames`.

    Attributes:
        frame: the frame.
        score: its cosine similarity to the title.
        rank: 1 for the most title-like frame, then 2, 3, ...
    """

    frame: Frame
    score: float
    rank: int


class FrameScorer(Protocol):
    """Anything that scores images against a title (:class:`ClipScorer`, or a test stub)."""

    def similarities(self, title: str, images: Sequence[Any]) -> np.ndarray:
        """One similarity per image."""
        ...


# ---------------------------------------------------------------------------- sampling


def sample_frames(source: str | Path | None, n: int = 5) -> list[Frame]:
    """Up to ``n`` frames spread uniformly over a video.

    Args:
        source: a folder of frame images (taken in file-name order), a video file
            (.mp4/.mov/.webm/.mkv, or anything else PyAV can open) or a single image file.
        n: frames wanted; a source with fewer frames gives all of them.

    Returns:
        The frames in time order; empty when ``source`` is empty or missing, or holds no frames.

    Raises:
        ValueError: a file cannot be read as an image or decoded as a video (one line, naming
            the file).
    """
    if not source or n <= 0:  # "" would be Path("."): the working directory, never meant
        return []
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        picks = _uniform_indices(len(files), n)
        return [Frame(i, files[i].name, _open_image(files[i]), files[i]) for i in picks]
    if not path.is_file():
        return []
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return [Frame(0, path.name, _open_image(path), path)]
    return _sample_video(path, n)


def _uniform_indices(total: int, n: int) -> list[int]:
    """``min(n, total)`` distinct indices in ``[0, total)``, one from the middle of each span."""
    if total <= n:
        return list(range(total))
    return [int((i + 0.5) * total / n) for i in range(n)]


def _open_image(path: Path) -> Image:
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            return im.convert("RGB")
    except Exception as e:  # PIL raises several types; the caller needs one
        raise ValueError(f"{path}: not a readable image ({type(e).__name__})") from e


def _sample_video(path: Path, n: int) -> list[Frame]:
    """Decode sequentially and keep frames at uniformly spread frame numbers.

    Frame numbers, not timestamps: containers often lack a duration (webm, mkv, streams cut
    without an index) while counting packets always works. A count that overstates the
    decodable frames (a truncated file) costs one more pass with the true count.
    """
    total = _count_frames(path)
    if total < 0:  # a container PyAV opens (audio, subtitles) but without pictures
        raise ValueError(f"{path}: no video stream")
    frames, decoded = _decode_at(path, set(_uniform_indices(total, n)))
    if len(frames) < min(n, decoded):
        frames, _ = _decode_at(path, set(_uniform_indices(decoded, n)))
    return frames


def _count_frames(path: Path) -> int:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return -1
            stream = container.streams.video[0]
            if stream.frames > 0:
                return int(stream.frames)
            return sum(1 for p in container.demux(stream) if p.size > 0)
    except Exception as e:  # av.error.* (InvalidDataError, ...) all mean "cannot decode"
        raise ValueError(f"{path}: cannot decode as a video ({type(e).__name__})") from e


def _decode_at(path: Path, wanted: set[int]) -> tuple[list[Frame], int]:
    """The frames numbered ``wanted`` and the number of frames decoded in all."""
    import av

    out: list[Frame] = []
    count = 0
    last = max(wanted, default=-1)
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            rate = float(stream.average_rate) if stream.average_rate else 0.0
            for frame in container.decode(stream):
                if count in wanted:
                    t = frame.time if frame.time is not None else (count / rate if rate else 0)
                    out.append(Frame(count, f"{t:.2f}s", frame.to_image().convert("RGB")))
                count += 1
                if count > last and len(out) == len(wanted):
                    break  # everything wanted is in; the rest need not be decoded
    except Exception as e:
        raise ValueError(f"{path}: cannot decode as a video ({type(e).__name__})") from e
    return out, count


# ---------------------------------------------------------------------------- CLIP scoring


class ClipScorer:
    """Cosine similarity between a title and images under a CLIP model (transformers).

    Args:
        model: a ``CLIPModel`` (or anything with ``get_text_features`` / ``get_image_features``).
        processor: its ``CLIPProcessor`` (a tokenizer plus an image processor).
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        model_name: the id stored with KFR records.
        batch_size: images per forward pass.
    """

    def __init__(self, model: Any, processor: Any, *, device: str = "cpu",
                 model_name: str = "in-memory-clip", batch_size: int = 16) -> None:
        import torch

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval() if model is not None else None
        self.processor = processor
        self.batch_size = batch_size
        self._model_id = model_name

    @property
    def model_id(self) -> str:
        """The scorer's stored name."""
        return self._model_id

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, backend: str = "transformers",
                        device: str = "cpu", pretrained: str | None = None) -> ClipScorer:
        """Load a CLIP model.

        Args:
            name_or_path: a transformers model folder or hub id (``backend="transformers"``), or
                an open_clip architecture name / ``hf-hub:`` id (``backend="open_clip"``).
            backend: ``"transformers"`` or ``"open_clip"``.
            device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
            pretrained: open_clip only: the weights' tag (e.g. ``"laion2b_s34b_b79k"``).

        Raises:
            ImportError: ``backend="open_clip"`` and open_clip is not installed.
            ValueError: an unknown backend.
        """
        name = str(name_or_path)
        if backend == "transformers":
            from transformers import CLIPModel, CLIPProcessor

            return cls(CLIPModel.from_pretrained(name), CLIPProcessor.from_pretrained(name),
                       device=device, model_name=Path(name).name or name)
        if backend == "open_clip":
            return _OpenClipScorer.load(name, pretrained=pretrained, device=device)
        raise ValueError(f"unknown CLIP backend {backend!r} (transformers or open_clip)")

    def similarities(self, title: str, images: Sequence[Any]) -> np.ndarray:
        """Cosine similarity of ``title`` to each image.

        Args:
            title: the video title (cut to the model's text length).
            images: PIL images, or :class:`Frame` s.

        Returns:
            float32 array, one similarity per image, in order.
        """
        import torch

        if not images:
            return np.zeros(0, dtype=np.float32)
        pics = [im.image if isinstance(im, Frame) else im for im in images]
        with torch.inference_mode():
            text = _unit(self._embed_text(title))
            feats = [_unit(self._embed_images(pics[i : i + self.batch_size]))
                     for i in range(0, len(pics), self.batch_size)]
            sims = torch.cat(feats) @ text.squeeze(0)
        return sims.float().cpu().numpy().astype(np.float32)

    def _embed_text(self, title: str) -> Any:
        max_len = getattr(getattr(self.model.config, "text_config", None),
                          "max_position_embeddings", 77)
        enc = self.processor.tokenizer([title], truncation=True, max_length=max_len,
                                       padding=True, return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items()
               if k in ("input_ids", "attention_mask")}
        return _pooled(self.model.get_text_features(**enc))

    def _embed_images(self, images: list) -> Any:
        pixels = self.processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        dtype = next(self.model.parameters()).dtype
        return _pooled(self.model.get_image_features(pixel_values=pixels.to(self.device, dtype)))


def _pooled(out: Any) -> Any:
    import torch

    # transformers 5 returns a model output whose pooler_output holds the projected features;
    # 4.x returned the tensor itself.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _unit(x: Any) -> Any:
    return x.float() / x.float().norm(dim=-1, keepdim=True).clamp(min=1e-12)


class _OpenClipScorer(ClipScorer):
    """The same scorer over an open_clip model (imported only when asked for)."""

    @classmethod
    def load(cls, name: str, pretrained: str | None, device: str) -> _OpenClipScorer:
        try:
            import open_clip
        except ImportError as e:
            raise ImportError("the open_clip CLIP backend needs the open_clip_torch package, "
                              "which is not installed; use backend='transformers'") from e
        if name.startswith("hf-hub:") or pretrained is None:
            model, preprocess = open_clip.create_model_from_pretrained(name)
        else:
            model, _, preprocess = open_clip.create_model_and_transforms(
                name, pretrained=pretrained)
        tag = f"{name}/{pretrained}" if pretrained else name
        scorer = cls(model, (open_clip.get_tokenizer(name), preprocess), device=device,
                     model_name=tag)
        return scorer

    def _embed_text(self, title: str) -> Any:
        tokenizer, _ = self.processor
        return self.model.encode_text(tokenizer([title]).to(self.device))

    def _embed_images(self, images: list) -> Any:
        import torch

        _, preprocess = self.processor
        batch = torch.stack([preprocess(im) for im in images]).to(self.device)
        return self.model.encode_image(batch)


# ---------------------------------------------------------------------------- selection


def select_key_frames(title: str, frames: Sequence[Frame], scorer: FrameScorer | None,
                      top_k: int = 3) -> list[KeyFrame]:
    """The ``top_k`` frames most similar to the title.

    Args:
        title: the video title.
        frames: sampled frames (:func:`sample_frames`).
        scorer: a :class:`ClipScorer` or anything with ``similarities(title, images)``.
        top_k: frames kept.

    Returns:
        Key frames by similarity, highest first; equal scores in frame order. Empty without
        frames or without a scorer.
    """
    if not frames or scorer is None or top_k <= 0:
        return []
    sims = np.asarray(scorer.similarities(title, [f.image for f in frames]), dtype=np.float32)
    if sims.shape != (len(frames),):
        raise ValueError(f"scorer returned {sims.shape} similarities for {len(frames)} frames")
    order = sorted(range(len(frames)), key=lambda i: (-float(sims[i]), frames[i].index, i))
    return [KeyFrame(frames[i], float(sims[i]), rank)
            for rank, i in enumerate(order[:top_k], start=1)]


# ---------------------------------------------------------------------------- prompt parts


def frames_to_image_parts(frames: Sequence[Frame | KeyFrame | Image],
                          max_side: int = 448, quality: int = 90) -> list[ImagePart]:
    """Frames as JPEG ``data:`` URL image parts, for any backend that takes images.

    Args:
        frames: frames, key frames or PIL images.
        max_side: larger images are downscaled (aspect kept) so their longer side is this.
        quality: JPEG quality.

    Returns:
        One :class:`ImagePart` per frame, in order.
    """
    parts = []
    for f in frames:
        im = f.frame.image if isinstance(f, KeyFrame) else f.image if isinstance(f, Frame) else f
        im = im.convert("RGB")
        if max(im.size) > max_side:
            scale = max_side / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))))
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        parts.append(ImagePart("data:image/jpeg;base64," + base64.b64encode(buf.getvalue())
                               .decode("ascii")))
    return parts
