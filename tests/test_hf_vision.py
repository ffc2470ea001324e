"""The hf-vision backend over a tiny random LLaVA: images in prompts, batching, scoring."""

from __future__ import annotations

import pytest
from PIL import Image
from vragent.agents.backends.base import ChatPrompt, Generation, ImagePart, TextPart
from vragent.agents.backends.tiny_vision import TOKENS_PER_IMAGE, tiny_vision_backend
from vragent.agents.keyframes import frames_to_image_parts

COLOURS = [(230, 20, 20), (20, 200, 40), (30, 40, 220), (240, 240, 30)]


@pytest.fixture(scope="module")
def backend():
    return tiny_vision_backend(seed=0, batch_size=4)


@pytest.fixture(scope="module")
def parts() -> list[ImagePart]:
    return frames_to_image_parts([Image.new("RGB", (60, 40), c) for c in COLOURS])


def prompt(images, text="Describe this video: Quick pasta #cooking", prefix="") -> ChatPrompt:
    return ChatPrompt((("system", "You profile short videos."),
                       ("user", (*images, TextPart(text)))), assistant_prefix=prefix)


def test_generate_with_one_and_three_images(backend, parts):
    one, three = backend.generate([prompt(parts[:1]), prompt(parts[:3])],
                                  max_new_tokens=8, temperature=0)
    text_only = backend.generate([prompt([])], max_new_tokens=8, temperature=0)[0]
    for g in (one, three, text_only):
        assert isinstance(g, Generation) and isinstance(g.text, str)
        assert 0 < g.tokens_out <= 8 and g.latency_s >= 0 and not g.truncated_prompt
    assert one.text  # the untied tiny model does not just repeat a special token
    # Each image adds its image tokens to the prompt the model sees.
    assert one.tokens_in == text_only.tokens_in + TOKENS_PER_IMAGE
    assert three.tokens_in == text_only.tokens_in + 3 * TOKENS_PER_IMAGE


def test_render_marks_images_and_keeps_the_prefix(backend, parts):
    text = backend.render(prompt(parts[:2], prefix="<think>"))
    assert text.count("<image>") == 2 and text.endswith("<|assistant|><think>")


def test_greedy_is_deterministic_and_batched_equals_one_by_one(backend, parts):
    prompts = [prompt(parts[:1]), prompt(parts[1:4], text="Funny cat compilation"),
               ChatPrompt((("user", "Hello, what is this video about?"),)),
               prompt(parts[2:3], prefix="<think>")]
    batched = backend.generate(prompts, max_new_tokens=6, temperature=0)
    again = backend.generate(prompts, max_new_tokens=6, temperature=0)
    alone = [backend.generate([p], max_new_tokens=6, temperature=0)[0] for p in prompts]
    assert [g.text for g in batched] == [g.text for g in again]
    assert [(g.text, g.tokens_in, g.tokens_out) for g in batched] == [
        (g.text, g.tokens_in, g.tokens_out) for g in alone]


def test_sampling_is_seeded(backend, parts):
    prompts = [prompt(parts[:2]), prompt([])]
    a = backend.generate(prompts, max_new_tokens=6, temperature=0.9, seed=3)
    b = backend.generate(prompts, max_new_tokens=6, temperature=0.9, seed=3)
    assert [g.text for g in a] == [g.text for g in b]


def test_text_only_prompt(backend):
    (g,) = backend.generate([ChatPrompt((("user", "Hi"),), assistant_prefix="Sure")],
                            max_new_tokens=4, temperature=0)
    assert isinstance(g.text, str) and g.tokens_out > 0 and g.tokens_in > 0


def test_score_probabilities(backend, parts):
    prompts = [prompt(parts[:1], prefix="Answer:"), prompt(parts[1:2], prefix="Answer:"),
               prompt([], prefix="Answer:")]
    scores = backend.score(prompts, options=("Yes", "No"))
    assert len(scores) == 3
    for s in scores:
        assert set(s.probs) == {"Yes", "No"}
        assert sum(s.probs.values()) == pytest.approx(1.0)
        assert all(0 < p < 1 for p in s.probs.values())
    assert scores[0].tokens_in == scores[2].tokens_in + TOKENS_PER_IMAGE
    # The pixels reach the model: a different image changes the answer's probabilities.
    assert scores[0].logits != scores[1].logits
    alone = backend.score(prompts[1:2])[0]
    assert alone.probs["Yes"] == pytest.approx(scores[1].probs["Yes"], abs=1e-4)


def test_http_images_are_not_fetched(backend):
    with pytest.raises(ValueError, match="does not fetch") as err:
        backend.generate([prompt([ImagePart("https://example.com/cover.jpg")])],
                         max_new_tokens=2, temperature=0)
    assert "\n" not in str(err.value)


def test_model_id_and_kind(backend):
    assert backend.model_id == "tiny-random-llava-s0" and backend.kind == "hf-vision"
    from vragent.agents.backends.hf_vision import HFVisionBackend

    with pytest.raises(ValueError, match="processor"):
        HFVisionBackend(model=backend.model)
