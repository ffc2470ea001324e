import pytest
from vragent.agents.ip_agent import IPAgent, ItemText, repair_profile

ITEM = ItemText(1, "Street food tour in Bangkok #food #travel", "Travel")


def test_good_profile_passes_unchanged():
    text = "A vlogger samples night-market dishes in Bangkok. #streetfood #travel"
    profile, tags, problems = repair_profile(text, ITEM)
    assert problems == [] and profile == text
    assert tags == "#streetfood #travel"


def test_missing_tags_are_repaired_and_flagged():
    profile, tags, problems = repair_profile("A food video.", ITEM)
    assert "no #tags" in problems
    assert tags == "#food #travel" and profile.endswith("#food #travel")


def test_too_long_profile_is_cut_to_35_words_and_flagged():
    long = " ".join(["word"] * 60) + " #tag"
    profile, _, problems = repair_profile(long, ITEM)
    assert len(profile.split()) <= 35
    assert profile.endswith("#tag")
    assert any("words" in p for p in problems)


def test_empty_completion_uses_title():
    profile, _, problems = repair_profile("   ", ITEM)
    assert "empty profile" in problems and "Bangkok" in profile


def test_category_becomes_a_tag_when_title_has_none():
    _profile, tags, _ = repair_profile("Nice.", ItemText(2, "Toy Story (1995)", "Animation|Comedy"))
    assert tags == "#Animation #Comedy"


def test_agent_never_stores_an_unflagged_broken_profile(tiny_backend):
    profiles = IPAgent(tiny_backend, max_new_tokens=16).profile([ITEM, ItemText(2, "x", "")])
    for p in profiles:
        assert len(p.profile.split()) <= 35
        assert p.format_ok == (p.problems == [])
        assert p.tags or not p.format_ok
        assert p.prompt and p.model_id.startswith("tiny-random")


def test_copied_example_is_flagged():
    from vragent.agents.prompts import IP_EXAMPLE

    profile, _, problems = repair_profile(IP_EXAMPLE + "\n\nThis is a profile of a driver", ITEM)
    assert "copied the prompt's example" in problems
    assert "Bangkok" in profile


def test_only_the_first_paragraph_is_kept():
    profile, _, problems = repair_profile("Night-market food. #food\n\nTitle: more chatter", ITEM)
    assert profile == "Night-market food. #food" and problems == []


# ---------------------------------------------------------------- the staged pipeline

from dataclasses import dataclass, field  # noqa: E402

from vragent.agents.backends.base import Generation, ImagePart, LLMBackend, Score  # noqa: E402
from vragent.agents.ip_agent import STAGES, make_key_frame_fn, parse_sufficiency  # noqa: E402


@dataclass
class ScriptedVisionBackend(LLMBackend):
    """A test double: answers each stage with a fixed text and records every prompt."""

    sufficiency: str = "Insufficient: the cover shows only a logo."
    prompts: list = field(default_factory=list)

    @property
    def model_id(self) -> str:
        return "scripted-vision"

    def generate(self, prompts, *, max_new_tokens=96, temperature=0.7, top_p=0.95, seed=0):
        out = []
        for p in prompts:
            self.prompts.append(p)
            system = p.messages[0][1]
            if "Sufficient" in system:
                text = self.sufficiency
            elif "'[Core Content" in system:
                text = " A cook fries duck intestines with chili. #spicyfood #homecooking"
            else:
                text = " shows a cook frying duck intestines in a hot wok."
            out.append(Generation(text=text, tokens_in=10, tokens_out=5, latency_s=0.01))
        return out

    def score(self, prompts, options=("Yes", "No")):
        return [Score({o: 1 / len(options) for o in options}, 0, 0.0) for _ in prompts]


def _images(prompt) -> int:
    content = prompt.messages[1][1]
    return 0 if isinstance(content, str) else sum(isinstance(p, ImagePart) for p in content)


@pytest.fixture
def video_item(tmp_path):
    from PIL import Image

    frames = tmp_path / "frames" / "7"
    frames.mkdir(parents=True)
    for k, colour in enumerate(["red", "green", "blue", "yellow", "white"]):
        Image.new("RGB", (40, 30), colour).save(frames / f"{k}.jpg")
    cover = tmp_path / "cover.jpg"
    Image.new("RGB", (40, 30), "black").save(cover)
    return ItemText(7, "spicy duck intestines # homemade summer food", "food",
                    "#homemade_summer_food", cover_path=str(cover), frames_source=str(frames))


def test_text_only_pipeline_records_every_stage(tiny_backend):
    agent = IPAgent(tiny_backend, max_new_tokens=8, cmp_max_new_tokens=8)
    (p,) = agent.profile([ITEM])
    assert [s["stage"] for s in p.stages] == list(STAGES)
    kfr, suff, cmp_, rra = p.stages
    assert kfr["skipped"] == "text-only model" and suff["skipped"] == "text-only model"
    # Perception ran on title, category and tags; its output feeds the profile prompt.
    assert not cmp_["skipped"] and "Bangkok" in cmp_["prompt"] and cmp_["tokens_out"] > 0
    assert cmp_["output"].startswith("This video")
    assert cmp_["output"][:40] in rra["prompt"]
    assert rra["output"] == p.profile and p.title.startswith("Street food")
    assert p.tokens_out == cmp_["tokens_out"] + rra["tokens_out"]
    assert p.model_id == agent.cache_key == "tiny-random-llama-s0/ip2/text/c8p8"


def test_insufficient_cover_sends_the_key_frames(video_item):
    backend = ScriptedVisionBackend()
    agent = IPAgent(backend, vision=True, key_frames=make_key_frame_fn(None, top_k=3))
    (p,) = agent.profile([video_item])
    kfr, suff, cmp_, _ = p.stages
    assert kfr["output"] == {"sampled": 5, "method": "uniform", "kept": ["0.jpg", "2.jpg",
                                                                        "4.jpg"]}
    assert suff["output"] == {"sufficient": False, "reason": "the cover shows only a logo"}
    suff_prompt, cmp_prompt, rra_prompt = backend.prompts
    assert _images(suff_prompt) == 1 and _images(cmp_prompt) == 3 and _images(rra_prompt) == 0
    assert "Pay special attention" in cmp_prompt.flat_text()
    assert cmp_["output"].startswith("This video shows a cook")
    assert p.format_ok and p.tags == "#spicyfood #homecooking"


def test_sufficient_cover_is_used_alone(video_item):
    backend = ScriptedVisionBackend(sufficiency="Sufficient. The cover shows the dish.")
    agent = IPAgent(backend, vision=True, key_frames=make_key_frame_fn(None))
    (p,) = agent.profile([video_item])
    assert p.stages[1]["output"]["sufficient"] is True
    assert _images(backend.prompts[1]) == 1  # the cover, not the frames


def test_insufficient_without_frames_uses_cover_with_the_limited_hint(video_item):
    from dataclasses import replace

    backend = ScriptedVisionBackend()
    agent = IPAgent(backend, vision=True, key_frames=make_key_frame_fn(None))
    (p,) = agent.profile([replace(video_item, frames_source="")])
    assert p.stages[0]["skipped"] == "no visual input"
    assert _images(backend.prompts[1]) == 1
    assert "Despite limited information" in backend.prompts[1].flat_text()


def test_clip_key_frames_with_tiny_models_end_to_end(video_item):
    from vragent.agents.backends.tiny_vision import tiny_clip_scorer, tiny_vision_backend
    from vragent.agents.keyframes import sample_frames

    scorer = tiny_clip_scorer()
    agent = IPAgent(tiny_vision_backend(), max_new_tokens=8, cmp_max_new_tokens=8,
                    sufficiency_max_new_tokens=8, vision=True,
                    key_frames=make_key_frame_fn(scorer, top_k=3))
    (p,) = agent.profile([video_item])
    kfr = p.stages[0]["output"]
    assert kfr["method"] == "clip" and len(kfr["kept"]) == 3
    # The kept frames are the three most title-like by CLIP similarity, best first.
    sims = scorer.similarities("spicy duck intestines # homemade summer food",
                               sample_frames(video_item.frames_source))
    best = sorted(range(5), key=lambda k: (-sims[k], k))[:3]
    assert [k["label"] for k in kfr["kept"]] == [f"{k}.jpg" for k in best]
    assert p.stages[1]["tokens_in"] > 0 and p.stages[2]["tokens_in"] > 0
    assert len(p.profile.split()) <= 35 and p.format_ok == (p.problems == [])
    assert "tiny-random-clip-s0" in agent.cache_key and "/vision/" in agent.cache_key


@pytest.mark.parametrize(("text", "verdict"), [
    ("Sufficient. The cover shows the dish.", True),
    ("Insufficient - the cover is blurry", False),
    ("insufficient, though the title would be sufficient with frames", False),
    ("The information is not enough", False),
    ("Yes.", None),
    ("", None),
])
def test_parse_sufficiency(text, verdict):
    assert parse_sufficiency(text)[0] is verdict


def test_single_prompt_variant_keeps_one_stage(tiny_backend):
    (p,) = IPAgent(tiny_backend, max_new_tokens=8, staged=False).profile([ITEM])
    assert [s["stage"] for s in p.stages] == ["rra"]
    assert p.model_id.endswith("/ip1/p8")


def test_openai_backend_sends_cover_and_key_frames_as_image_parts(tiny_backend, video_item):
    """With a served vision model, the images travel as OpenAI content parts."""
    from vragent.agents.backends.openai_backend import OpenAIBackend

    from tests.openai_stand_in import stand_in

    with stand_in(tiny_backend, torch_threads=1) as server:
        backend = OpenAIBackend(server.url, "tiny", max_retries=0)
        try:
            agent = IPAgent(backend, max_new_tokens=6, cmp_max_new_tokens=6,
                            sufficiency_max_new_tokens=6, vision=True,
                            key_frames=make_key_frame_fn(None, top_k=3))
            (p,) = agent.profile([video_item])
        finally:
            backend.close()
        bodies = server.posts("/v1/chat/completions")
    assert len(bodies) == 3  # sufficiency, perception, profile

    def parts(body):
        content = body["messages"][1]["content"]
        return [] if isinstance(content, str) else [c["type"] for c in content]

    suff, cmp_, rra = (parts(b) for b in bodies)
    assert suff == ["image_url", "text"]
    verdict = p.stages[1]["output"]["sufficient"]
    # Whatever the random model answered, perception saw the cover or the three key frames.
    assert cmp_.count("image_url") == (1 if verdict else 3) and rra == []
    url = bodies[1]["messages"][1]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,")
