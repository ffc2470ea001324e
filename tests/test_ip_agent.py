from agents.ip_agent import IPAgent, ItemText, repair_profile

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
    from agents.prompts import IP_EXAMPLE

    profile, _, problems = repair_profile(IP_EXAMPLE + "\n\nThis is a profile of a driver", ITEM)
    assert "copied the prompt's example" in problems
    assert "Bangkok" in profile


def test_only_the_first_paragraph_is_kept():
    profile, _, problems = repair_profile("Night-market food. #food\n\nTitle: more chatter", ITEM)
    assert profile == "Night-market food. #food" and problems == []
