"""Key-frame retrieval: frame sampling (folders, videos), CLIP scoring, selection, image parts."""

from __future__ import annotations

import base64
import io
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from vragent.agents.keyframes import (
    ClipScorer,
    Frame,
    KeyFrame,
    frames_to_image_parts,
    sample_frames,
    select_key_frames,
)

# Far-apart solid colours, so decoded (lossy) frames are still recognisable.
COLOURS = [((i * 53) % 256, (i * 97 + 40) % 256, (i * 151 + 80) % 256) for i in range(20)]


def _encoder() -> str:
    import av

    for name in ("mpeg4", "libx264"):
        try:
            av.Codec(name, "w")
            return name
        except Exception:  # not built into this PyAV
            continue
    pytest.skip("this PyAV build encodes neither mpeg4 nor libx264")


def write_video(path: Path, colours=COLOURS, size: int = 64, fps: int = 10) -> Path:
    """One solid-colour frame per colour, ``fps`` frames a second."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream(_encoder(), rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        for i, colour in enumerate(colours):
            frame = av.VideoFrame.from_image(Image.new("RGB", (size, size), colour))
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def mean_colour(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float32).reshape(-1, 3).mean(0)


def nearest_colour(image: Image.Image) -> int:
    dist = [np.abs(mean_colour(image) - np.array(c)).sum() for c in COLOURS]
    return int(np.argmin(dist))


# ---------------------------------------------------------------------------- folders


def test_folder_frames_in_name_order(tmp_path):
    for i in range(5):
        ext = "jpg" if i % 2 else "png"
        Image.new("RGB", (40, 30), COLOURS[i]).save(tmp_path / f"frame_{i:02d}.{ext}")
    (tmp_path / "notes.txt").write_text("not a frame")
    frames = sample_frames(tmp_path, n=5)
    assert [f.label for f in frames] == [f"frame_{i:02d}.{'jpg' if i % 2 else 'png'}"
                                         for i in range(5)]
    assert [f.index for f in frames] == list(range(5))
    assert all(f.image.mode == "RGB" and f.image.size == (40, 30) for f in frames)
    assert all(f.path == tmp_path / f.label for f in frames)
    assert [nearest_colour(f.image) for f in frames] == list(range(5))


def test_folder_with_more_frames_is_thinned_uniformly(tmp_path):
    for i in range(7):
        Image.new("RGB", (8, 8), COLOURS[i]).save(tmp_path / f"{i}.png")
    frames = sample_frames(str(tmp_path), n=5)
    assert [f.index for f in frames] == [0, 2, 3, 4, 6]
    assert len(sample_frames(tmp_path, n=10)) == 7


def test_missing_or_empty_sources_give_no_frames(tmp_path):
    assert sample_frames("") == []
    assert sample_frames(None) == []
    assert sample_frames(tmp_path / "nope") == []
    assert sample_frames(tmp_path / "nope.mp4") == []
    assert sample_frames(tmp_path) == []  # an empty folder
    assert sample_frames(tmp_path, n=0) == []


def test_single_image_file_is_one_frame(tmp_path):
    Image.new("RGB", (8, 8), COLOURS[3]).save(tmp_path / "cover.jpg")
    (frame,) = sample_frames(tmp_path / "cover.jpg")
    assert frame.label == "cover.jpg" and frame.index == 0


def test_unreadable_files_raise_one_line_error_naming_the_file(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 10)
    with pytest.raises(ValueError, match=r"broken\.mp4: cannot decode") as err:
        sample_frames(bad)
    assert "\n" not in str(err.value)
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"b\.jpg") as err:
        sample_frames(folder)
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------- videos


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])  # mkv carries no frame count: packets
def test_video_gives_n_frames_uniformly_in_time_order(tmp_path, suffix):
    video = write_video(tmp_path / f"clip{suffix}")
    frames = sample_frames(video, n=5)
    assert len(frames) == 5
    assert [f.index for f in frames] == [2, 6, 10, 14, 18]
    assert [nearest_colour(f.image) for f in frames] == [2, 6, 10, 14, 18]
    times = [float(f.label.rstrip("s")) for f in frames]
    assert times == sorted(times) and times[0] == pytest.approx(0.2, abs=0.05)
    assert all(f.path is None and f.image.size == (64, 64) and f.image.mode == "RGB"
               for f in frames)


def test_short_video_gives_all_its_frames(tmp_path):
    video = write_video(tmp_path / "short.mp4", colours=COLOURS[:3])
    assert [f.index for f in sample_frames(video, n=5)] == [0, 1, 2]


# ---------------------------------------------------------------------------- CLIP


@pytest.fixture(scope="module")
def clip():
    from vragent.agents.backends.tiny_vision import build_tiny_clip

    model, processor = build_tiny_clip(seed=0)
    return model, processor, ClipScorer(model, processor, model_name="tiny-clip")


def colour_frames(n: int = 6) -> list[Frame]:
    return [Frame(i, f"{i}.png", Image.new("RGB", (48, 36), COLOURS[i])) for i in range(n)]


def reference_similarities(model, processor, title: str, images) -> np.ndarray:
    """Cosine similarities computed directly from the CLIP towers."""
    import torch

    with torch.inference_mode():
        ids = processor.tokenizer([title], return_tensors="pt")
        text = model.get_text_features(input_ids=ids["input_ids"],
                                       attention_mask=ids["attention_mask"]).pooler_output
        pix = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        img = model.get_image_features(pixel_values=pix).pooler_output
    text = text / text.norm(dim=-1, keepdim=True)
    img = img / img.norm(dim=-1, keepdim=True)
    return (img @ text[0]).numpy()


def test_similarities_match_clip_towers(clip):
    model, processor, scorer = clip
    frames = colour_frames()
    images = [f.image for f in frames]
    sims = scorer.similarities("Quick pasta #cooking", images)
    assert sims.dtype == np.float32 and sims.shape == (6,)
    np.testing.assert_allclose(sims, reference_similarities(model, processor,
                                                            "Quick pasta #cooking", images),
                               atol=1e-5)
    assert np.all(np.abs(sims) <= 1.0 + 1e-5)
    np.testing.assert_array_equal(sims, scorer.similarities("Quick pasta #cooking", frames))
    assert scorer.similarities("x", []).shape == (0,)
    assert scorer.model_id == "tiny-clip"


def test_long_titles_are_cut_to_the_text_length(clip):
    _, _, scorer = clip
    sims = scorer.similarities("cooking " * 500, [f.image for f in colour_frames(2)])
    assert sims.shape == (2,) and np.all(np.isfinite(sims))


def test_select_key_frames_top3_by_similarity(clip):
    model, processor, scorer = clip
    frames = colour_frames()
    title = "Street food tour #travel"
    ref = reference_similarities(model, processor, title, [f.image for f in frames])
    kept = select_key_frames(title, frames, scorer, top_k=3)
    assert all(isinstance(k, KeyFrame) for k in kept)
    assert [k.frame.index for k in kept] == list(np.argsort(-ref, kind="stable")[:3])
    assert [k.rank for k in kept] == [1, 2, 3]
    assert [k.score for k in kept] == sorted((k.score for k in kept), reverse=True)
    np.testing.assert_allclose([k.score for k in kept], np.sort(ref)[::-1][:3], atol=1e-5)
    assert select_key_frames(title, frames, scorer, top_k=3) == kept  # deterministic
    assert len(select_key_frames(title, frames[:2], scorer, top_k=3)) == 2


def test_select_key_frames_without_frames_or_scorer(clip):
    _, _, scorer = clip
    assert select_key_frames("t", [], scorer) == []
    assert select_key_frames("t", colour_frames(3), None) == []


class _ConstantScorer:
    def similarities(self, title, images):
        return np.full(len(images), 0.5, dtype=np.float32)


def test_ties_keep_frame_order():
    frames = list(reversed(colour_frames(5)))  # indices 4..0
    kept = select_key_frames("t", frames, _ConstantScorer(), top_k=3)
    assert [k.frame.index for k in kept] == [0, 1, 2]


def test_open_clip_backend_names_the_missing_package():
    try:
        import open_clip  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("open_clip is installed")
    with pytest.raises(ImportError, match="open_clip_torch") as err:
        ClipScorer.from_pretrained("ViT-B-32", backend="open_clip")
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown CLIP backend"):
        ClipScorer.from_pretrained("x", backend="nope")


# ---------------------------------------------------------------------------- image parts


def _decode(url: str) -> Image.Image:
    header, _, payload = url.partition(",")
    assert header == "data:image/jpeg;base64"
    return Image.open(io.BytesIO(base64.b64decode(payload)))


def test_frames_to_image_parts_downscale_keeping_aspect():
    big = Frame(0, "big", Image.new("RGB", (1000, 500), COLOURS[1]))
    small = Frame(1, "small", Image.new("RGB", (100, 60), COLOURS[2]))
    key = KeyFrame(small, 0.3, 1)
    parts = frames_to_image_parts([big, small, key, big.image], max_side=448)
    sizes = [_decode(p.url).size for p in parts]
    assert sizes == [(448, 224), (100, 60), (100, 60), (448, 224)]
    assert nearest_colour(_decode(parts[1].url).convert("RGB")) == 2


def test_overstated_frame_count_costs_a_second_pass(tmp_path, monkeypatch):
    import vragent.agents.keyframes as kf

    video = write_video(tmp_path / "clip.mp4")
    monkeypatch.setattr(kf, "_count_frames", lambda path: 30)  # a truncated file's header
    assert [f.index for f in sample_frames(video, n=5)] == [2, 6, 10, 14, 18]
