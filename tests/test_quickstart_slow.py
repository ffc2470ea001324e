"""The quickstart with the real SmolLM2-135M-Instruct on MovieLens-100K (slow; runs in CI)."""

import pytest
from sqlalchemy import select
from vragent.sandbox.runner import start
from vragent.sandbox.store import Decision, ItemProfileRow, Store


@pytest.mark.slow
def test_quickstart_with_smollm2(tmp_path):
    url = f"sqlite:///{tmp_path}/quick.sqlite"
    run_id, rows = start("quickstart", url)
    assert [r["arm"] for r in rows] == ["popular", "cooccurrence"]
    assert all(r["impressions"] > 0 and r["tokens_in"] > 0 for r in rows)
    store = Store(url)
    with store.session() as s:
        decs = list(s.scalars(select(Decision).where(Decision.run_id == run_id)))
        profiles = list(s.scalars(select(ItemProfileRow)))
    # The default US policy: SmolLM2 reads the logs' evidence and a learned head decides.
    assert {d.model_id.split("@")[0] for d in decs} == {"grounded-smollm2"}
    assert all("User's viewing history:" in d.prompt for d in decs)
    assert all("Evidence: taste " in d.prompt for d in decs)
    p = [d.p_like for d in decs]
    assert all(0.0 <= x <= 1.0 for x in p)
    # Users react to what they are shown: p(like) spans a wide range across the slates (the
    # prompt-only SmolLM2 stayed between 0.79 and 0.96 for every movie).
    assert max(p) - min(p) > 0.5
    traced = [d for d in decs if d.traced]
    assert traced and all(d.completion is not None for d in traced)
    assert len(profiles) == 8 and all(len(p.profile.split()) <= 35 for p in profiles)
    # The two arms really served different slates.
    items = {arm: {d.item_id for d in decs if d.arm == arm} for arm in ("popular", "cooccurrence")}
    assert items["popular"] != items["cooccurrence"]
