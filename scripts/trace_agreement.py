"""Traces that decide (issue 18, acceptance 5): a head policy in generate against score mode.

For held-out MovieLens-100K users (each user's last item against a uniform and a
popularity-matched unseen item, the rows of ``vragent rl train-head``'s held-out check), the
policy decides each row twice through :class:`agents.us_agent.USAgent`:

* score mode: p(Yes) from the plain prompt, Yes iff p > 0.5;
* generate mode: the model writes the user's preference (once per user), reads each candidate
  after it, and the head answers.

Prints the share of generate-mode answers that parse (the model wrote a preference and the
answer reads Yes/No), the share that agree with the score-mode decision, both modes' AUCs on
the same rows, and ``--show`` traces. docs/results.md, "Traces that decide", is its output.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/trace_agreement.py --users 200 --show 10
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
from scipy.stats import bootstrap
from vragent.agents.parsing import parse_judgement
from vragent.agents.us_agent import Candidate, SlateRequest, USAgent
from vragent.rl.grounded import training_examples
from vragent.rl.head_training import head_setup, protocol_aucs


def main() -> None:
    from vragent.agents.backends.hf import HFBackend
    from vragent.agents.policy_head import ScoreHead
    from vragent.sandbox.assets import require_smollm2
    from vragent.sandbox.policies import load_policy

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="grounded-smollm2")
    ap.add_argument("--users", type=int, default=200, help="held-out users (3 rows each)")
    ap.add_argument("--show", type=int, default=10, help="traces to print")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    pol = load_policy(args.policy)
    conf = pol.manifest.config
    setup = head_setup(seed=conf["seed"], min_len=conf["min_len"],
                       eval_users=conf["eval_users"], train_users=conf["train_users"],
                       history_len=conf["history_len"])
    grounding, maker = setup.grounding, setup.maker
    examples = training_examples(setup.sequences, setup.held_out[: args.users], setup.sampler)
    backend = HFBackend(require_smollm2(), model_name=pol.manifest.model_id,
                        score_head=ScoreHead.load(pol.path))

    requests, k = [], 0
    while k < len(examples):  # one slate per user: their rows, as training_examples made them
        block = [e for e in examples[k:k + 3] if e.user_id == examples[k].user_id]
        evidence = grounding.evidence(block[0].history, [e.item_id for e in block])
        requests.append(SlateRequest(
            arm="check", user_id=block[0].user_id,
            persona=maker.persona(block[0].user_id, block[0].history),
            candidates=[Candidate(e.item_id, maker.line(e.item_id), pos, 0.0, ev)
                        for pos, (e, ev) in enumerate(zip(block, evidence, strict=True))]))
        k += len(block)
    decide = {mode: [d for o in USAgent(backend, mode=mode, seed=args.seed)
                     .decide(requests, step=0) for d in o.decisions]
              for mode in ("score", "generate")}
    plain = np.array([d.p_like for d in decide["score"]])
    gen = decide["generate"]
    parsed = [parse_judgement(d.completion or "", "<answer>") for d in gen]
    parses = np.array([d.format_ok and p.prediction in ("Yes", "No")
                       for d, p in zip(gen, parsed, strict=True)], dtype=float)
    agree = np.array([(p.prediction == "Yes") == (q > 0.5)
                      for p, q in zip(parsed, plain, strict=True)], dtype=float)
    reasoned = np.array([d.p_like for d in gen])
    users = pd.Series([e.user_id for e in examples])
    print(f"{users.nunique()} held-out users, {len(examples)} rows; policy {pol.manifest.model_id}")
    for name, values in (("generate-mode answers that parse", parses),
                         ("generate answer = score decision", agree)):
        # Every user has the same number of rows: the mean of user means is the row mean, and
        # resampling users (not rows) respects that a user's rows share one written preference.
        per_user = pd.Series(values).groupby(users).mean().to_numpy()
        ci = bootstrap((per_user,), np.mean, n_resamples=2000, random_state=args.seed,
                       method="percentile").confidence_interval
        print(f"{name}: {values.mean():.3f} [{ci.low:.3f}, {ci.high:.3f}]")
    for name, p in (("score mode", plain), ("generate mode", reasoned)):
        aucs = protocol_aucs(examples, p)
        print(f"AUC {name}: random {aucs['random']:.3f}, popular {aucs['popular']:.3f}; "
              f"accuracy {np.mean((p > 0.5) == [e.label for e in examples]):.3f}")
    for e, d, p0 in list(zip(examples, gen, plain, strict=True))[: args.show]:
        kind = "the real next item" if e.label else f"a {e.protocol} negative"
        print(f"\n- user {e.user_id}, {maker.line(e.item_id)} ({kind}): score p {p0:.2f}, "
              f"generate p {d.p_like:.2f}\n  {d.completion.strip()}")


if __name__ == "__main__":
    main()
