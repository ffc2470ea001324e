"""Bad LLM output is recorded with the documented fallback and reaches the store intact."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from sqlalchemy import select
from vragent.agents.backends.base import ChatPrompt, Generation, LLMBackend, Score
from vragent.agents.ip_agent import ItemText
from vragent.agents.persona import build_persona
from vragent.agents.us_agent import Candidate, SlateRequest, USAgent

# ------------------------------------------------------------------ dataset files


# ------------------------------------------------------------------ bad LLM output

ENDLESS = "<think>" + "and then the user " * 2800  # ~50k characters, never closed
BAD_COMPLETIONS = {
    "empty": "",
    "endless": ENDLESS,
    "wrong_language": " 用户喜欢戏剧 </think><answer> (1) 用户偏好: 戏剧\n(2) 预测: 是 </answer>",
    "several_answers": (" x </think><answer>(2) Prediction: Yes</answer>"
                        "<answer>(2) Prediction: No</answer>"),
}


class ScriptedCompletionBackend(LLMBackend):
    """Fault injector: answers generate calls with scripted (broken) completions.

    ``script`` maps the candidate text (the last line of the user turn) to its completion, so
    each decision gets its scripted answer whatever the batching and the retries.
    """

    kind = "scripted-fault-injector"

    def __init__(self, script: dict[str, str]) -> None:
        self.script = script
        self.calls = 0

    @property
    def model_id(self) -> str:
        return "scripted-fault-injector"

    def generate(self, prompts: Sequence[ChatPrompt], *, max_new_tokens: int = 96,
                 temperature: float = 0.7, top_p: float = 0.95, seed: int = 0,
                 ) -> list[Generation]:
        self.calls += 1
        out = []
        for p in prompts:
            candidate = str(p.messages[-1][1]).rsplit("\n", 1)[-1]
            text = self.script[candidate]
            out.append(Generation(text, 10, len(text) // 4, 0.001))
        return out

    def score(self, prompts: Sequence[ChatPrompt], options: Sequence[str] = ("Yes", "No"),
              ) -> list[Score]:
        raise AssertionError("generate mode must not score")


def _bad_output_requests() -> list[SlateRequest]:
    persona = build_persona({"age": 40}, [ItemText(1, "old film", "Drama")])
    cands = [Candidate(10 + k, name, k, 1.0 - k / 10) for k, name in enumerate(BAD_COMPLETIONS)]
    return [SlateRequest("a", 5, persona, cands)]


@pytest.mark.parametrize("retries", [0, 2])
def test_bad_completions_are_recorded_with_the_documented_fallback(retries):
    backend = ScriptedCompletionBackend(BAD_COMPLETIONS)
    agent = USAgent(backend, mode="generate", seed=1, format_retries=retries)
    (outcome,) = agent.decide(_bad_output_requests(), step=0)
    recs = {BAD_COMPLETIONS_BY_ITEM[d.item_id]: d for d in outcome.decisions}
    for kind in ("empty", "endless", "wrong_language"):
        d = recs[kind]
        # Unreadable after every retry: invalid, skipped, format_ok false (docs/user-actions.md).
        assert (d.action, d.fallback, d.format_ok) == ("skip", "invalid", False), kind
        assert d.attempts == retries + 1
        assert d.completion == BAD_COMPLETIONS[kind]  # stored as written, never altered
        assert d.prompt.startswith("<|system|>") and d.traced
    several = recs["several_answers"]
    # A readable but malformed answer is acted on (the last block), flagged, never re-asked.
    assert (several.action, several.fallback, several.format_ok) == ("skip", None, False)
    assert several.answer == "(2) Prediction: No" and several.attempts == 1
    assert len(recs["endless"].think) > 40_000  # kept whole for inspection
    assert backend.calls == 1 + retries


BAD_COMPLETIONS_BY_ITEM = {10 + k: name for k, name in enumerate(BAD_COMPLETIONS)}


def test_bad_completions_reach_the_store_intact(tmp_path):
    from vragent.sandbox.config import load_scenario
    from vragent.sandbox.runner import create_run, execute
    from vragent.sandbox.store import Decision, Store

    from tests.conftest import tiny_scenario, write_scenario

    class AnyCandidate(dict):
        """Every candidate gets the next bad completion, in turn."""

        def __init__(self) -> None:
            super().__init__()
            self.i = 0

        def __missing__(self, key: str) -> str:
            text = list(BAD_COMPLETIONS.values())[self.i % len(BAD_COMPLETIONS)]
            self.i += 1
            return text

    sc = tiny_scenario(
        population={"size": 3, "history_len": 3},
        simulation={"steps": 1, "slate_size": 4, "users_per_task": 3, "refit_every": 0},
        arms=[{"name": "popular", "recommender": "popular"}],
        backend={"kind": "tiny", "decision_mode": "generate", "format_retries": 1,
                 "max_new_tokens": 8, "cache": False},
        ip_agent={"enabled": False})
    scenario, text, _ = load_scenario(str(write_scenario(tmp_path, sc)))
    store = Store(f"sqlite:///{tmp_path}/bad.sqlite")
    run_id = create_run(store, scenario, text, "bad-output")
    execute(store, run_id, backend=ScriptedCompletionBackend(AnyCandidate()))
    with store.session() as s:
        rows = s.execute(select(Decision.completion, Decision.format_ok, Decision.fallback,
                                Decision.action).where(Decision.run_id == run_id)).all()
    assert store.get_run(run_id).status == "finished"
    assert len(rows) == 3 * 4  # one decision per impression: 3 users x 4 slots, 1 step
    for completion, format_ok, fallback, action in rows:
        assert completion in BAD_COMPLETIONS.values()
        assert format_ok is False
        if completion == BAD_COMPLETIONS["several_answers"]:
            assert (fallback, action) == (None, "skip")
        else:
            # format_retries=1 may draw another bad text; all of these are unreadable.
            assert (fallback, action) == ("invalid", "skip")
