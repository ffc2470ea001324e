import pytest
from vragent.agents.backends.base import ChatPrompt
from vragent.agents.prompts import PersonaView, judgement_prompt


def _slate_prompts(n_users=2, n_cands=4):
    prompts = []
    for u in range(n_users):
        history = tuple(f"video {u}-{i} #cooking" for i in range(6))
        pv = PersonaView(f"user {u} likes cooking", history)
        prompts += [judgement_prompt(pv, f"candidate {c} #pets" + " more" * c, think=False)
                    for c in range(n_cands)]
    return prompts


def test_prefix_reuse_matches_naive_forward(tiny_backend):
    prompts = _slate_prompts()
    fast = tiny_backend.score(prompts)
    naive = tiny_backend.score_naive(prompts)
    for f, n in zip(fast, naive, strict=True):
        for opt in ("Yes", "No"):
            assert abs(f.logits[opt] - n.logits[opt]) < 1e-4
        assert abs(sum(f.probs.values()) - 1) < 1e-9
        assert f.tokens_in == n.tokens_in


def test_left_padding_does_not_change_scores(tiny_backend):
    prompts = _slate_prompts(n_users=3, n_cands=1)
    together = tiny_backend.score_naive(prompts)
    alone = [tiny_backend.score_naive([p])[0] for p in prompts]
    for a, b in zip(together, alone, strict=True):
        assert abs(a.logits["Yes"] - b.logits["Yes"]) < 1e-4


def test_generate_is_seeded(tiny_backend):
    prompts = [ChatPrompt((("user", "hello"),), "<think>")] * 3
    a = tiny_backend.generate(prompts, max_new_tokens=8, seed=5)
    b = tiny_backend.generate(prompts, max_new_tokens=8, seed=5)
    assert [g.text for g in a] == [g.text for g in b]
    assert all(0 < g.tokens_out <= 8 and g.tokens_in > 0 for g in a)


def test_prompt_truncation_is_flagged(tiny_backend):
    old = tiny_backend.max_prompt_tokens
    tiny_backend.max_prompt_tokens = 32
    try:
        (s,) = tiny_backend.score([ChatPrompt((("user", "long " * 200),), "x")])
        assert s.truncated_prompt and s.tokens_in == 32
    finally:
        tiny_backend.max_prompt_tokens = old


def test_openai_backend_against_stand_in_server(tiny_backend):
    from vragent.agents.backends.openai_backend import OpenAIBackend

    from tests.openai_stand_in import serve_stand_in

    with serve_stand_in(tiny_backend) as url:
        b = OpenAIBackend(url, "tiny", max_concurrency=4)
        prompts = _slate_prompts(n_users=1, n_cands=3)
        scores = b.score(prompts)
        local = tiny_backend.score_naive(prompts)
        for s, ref in zip(scores, local, strict=True):
            assert s.found
            assert s.probs["Yes"] == pytest.approx(ref.probs["Yes"], abs=1e-3)
        gens = b.generate(prompts, max_new_tokens=6, seed=3)
        assert len(gens) == 3 and all(g.tokens_out > 0 for g in gens)


def test_openai_backend_reports_a_down_server():
    from vragent.agents.backends.base import BackendError
    from vragent.agents.backends.openai_backend import OpenAIBackend

    b = OpenAIBackend("http://127.0.0.1:9/v1", "x", timeout_s=2, max_retries=0)
    with pytest.raises(BackendError, match=r"127\.0\.0\.1:9"):
        b.generate([ChatPrompt((("user", "hi"),))], max_new_tokens=2)


def test_prefix_groups_split_at_user_boundaries():
    from vragent.agents.backends.prefix_tree import prefix_groups as _prefix_groups

    system = [1] * 20
    user_a = system + [2] * 30
    user_b = system + [3] * 30
    ids = [[*user_a, 7], [*user_a, 8, 9], [*user_b, 7], [*user_b, 8], [5, 6]]
    assert _prefix_groups(ids, 16) == [[0, 1], [2, 3], [4]]


def test_int8_layers_are_opt_in_close_and_cached_apart(tiny_backend):
    """``backend.quantize: int8`` quantises the decoder's linear layers only: scores stay close
    to the exact model's, the model id says int8 (so the response cache never mixes the two),
    and the exact backend is untouched."""
    import torch
    from vragent.agents.backends.loading import int8_layers
    from vragent.sandbox.backend_factory import make_backend
    from vragent.sandbox.config import BackendConfig

    exact = make_backend(BackendConfig(kind="tiny"))
    quant = make_backend(BackendConfig(kind="tiny", quantize="int8"))
    assert quant.model_id == exact.model_id + "+int8" and not exact.quantized
    persona = PersonaView("a test user", ("Cooking pasta", "Cat nap"))
    prompts = [judgement_prompt(persona, t, think=False) for t in ("Cat video", "Stock news",
                                                                  "Dog video", "Car crash")]
    p_exact = [s.probs["Yes"] for s in exact.score(prompts, ["Yes", "No"])]
    p_int8 = [s.probs["Yes"] for s in quant.score(prompts, ["Yes", "No"])]
    assert max(abs(a - b) for a, b in zip(p_exact, p_int8, strict=True)) < 0.05
    assert p_exact != p_int8  # it did quantise
    assert any("quantized" in type(m).__module__ for m in quant.model.model.layers.modules())
    assert not any("quantized" in type(m).__module__ for m in exact.model.modules())
    with pytest.raises(ValueError, match="CPU only"):
        int8_layers(torch.nn.Linear(2, 2), torch.device("cuda"))


def test_int8_refuses_a_head_policy(tiny_backend):
    """A head reads a hidden state that int8 moves too far: refused in one line."""
    import numpy as np
    from vragent.agents.backends.hf import HFBackend
    from vragent.agents.policy_head import ScoreHead

    width = tiny_backend.model.config.hidden_size
    head = ScoreHead(weight=np.zeros(width), bias=0.0, mean=np.zeros(width), scale=np.ones(width))
    with pytest.raises(ValueError, match="cannot run a head policy"):
        HFBackend(model=tiny_backend.model, tokenizer=tiny_backend.tokenizer, score_head=head,
                  quantize="int8")
