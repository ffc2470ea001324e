"""The grounded-head probe of docs/results.md ("A grounded policy on a frozen SmolLM2").

Held-out and training users of MovieLens-100K; each user's last item against one uniform and
one popularity-matched unseen item. Evidence and baselines are fitted on every user's sequence
without its last item. A logistic head is fitted on SmolLM2's state (final layer and layers 6,
12, 18, 24) after the grounded score prompt of the training users, and scored on the held-out
users' rows beside item-kNN, the learned response model, popularity and their logistic stack.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/grounded_probe.py --eval-users 150 \
        --train-users 300 --data "$VRAGENT_DATA_DIR/movielens-100k"
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from vragent.agents.backends.hf import HFBackend
from vragent.rl.grounded import Example, example_prompts
from vragent.rl.head_training import head_setup
from vragent.sandbox.assets import require_smollm2

LAYERS = (6, 12, 18, 24)


def examples(sequences, users, sampler):
    out = []
    for u in users:
        seq = sequences[u]
        seen, hist = set(seq), tuple(seq[:-1])
        for proto in ("random", "popular"):
            neg = (sampler.random(u, seen, 1)[0] if proto == "random"
                   else sampler.popular(u, seq[-1], seen, 1)[0])
            out += [Example(u, hist, seq[-1], True, proto), Example(u, hist, neg, False, proto)]
    return out


def states(backend, prompts):
    inner, orig = backend.model.model, backend.model.model.forward

    def forward(*a, **k):  # every probed layer's state, side by side
        k["output_hidden_states"] = True
        out = orig(*a, **k)
        out.last_hidden_state = torch.cat(
            [out.hidden_states[x] for x in LAYERS] + [out.last_hidden_state], dim=-1)
        return out

    ids = [backend._token_ids(p) for p in prompts]
    rows = [None] * len(prompts)
    inner.forward = forward
    try:
        with torch.inference_mode():
            for units, h in backend._unit_batches(ids):
                for j, i in enumerate(i for u in units for i in u.prompt_ids):
                    rows[i] = h[j].float().numpy()
    finally:
        inner.forward = orig
    return np.stack(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--eval-users", type=int, default=150)
    ap.add_argument("--train-users", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    setup = head_setup("movielens-100k", args.data, seed=args.seed, eval_users=args.eval_users,
                       train_users=args.train_users)
    seqs, g, sampler, maker = setup.sequences, setup.grounding, setup.sampler, setup.maker
    tr, ev = examples(seqs, setup.train, sampler), examples(seqs, setup.held_out, sampler)
    backend = HFBackend(require_smollm2(), model_name="smollm2")
    t0 = time.time()
    htr = states(backend, example_prompts(tr, g, maker))
    hev = states(backend, example_prompts(ev, g, maker))
    print(f"{len(tr) + len(ev)} prompts in {time.time() - t0:.0f} s")
    ytr = np.array([e.label for e in tr])
    yev = np.array([e.label for e in ev])
    proto = np.array([e.protocol for e in ev])
    raw_tr = np.stack([g.raw(e.history, [e.item_id])[0] for e in tr])
    raw_ev = np.stack([g.raw(e.history, [e.item_id])[0] for e in ev])
    rows = []

    def report(name, s):
        rows.append([name] + [roc_auc_score(yev[proto == p], s[proto == p])
                              for p in ("random", "popular")])

    for j, name in enumerate(("taste (response model)", "item-kNN", "popularity")):
        report(name, raw_ev[:, j])
    feats = lambda r: np.column_stack([r[:, 0], np.log1p(r[:, 1]), np.log1p(r[:, 2])])  # noqa: E731
    stack = LogisticRegression(C=1.0, max_iter=5000).fit(feats(raw_tr), ytr)
    report("stack of the three (logistic)", stack.decision_function(feats(raw_ev)))
    d = htr.shape[1] // (len(LAYERS) + 1)
    for j, layer in enumerate([*LAYERS, "final"]):
        a, b = htr[:, j * d:(j + 1) * d], hev[:, j * d:(j + 1) * d]
        mu, sd = a.mean(0), a.std(0) + 1e-6
        head = LogisticRegression(C=0.01, max_iter=5000).fit((a - mu) / sd, ytr)
        report(f"SmolLM2 layer {layer} + head", head.decision_function((b - mu) / sd))
    print("| model | AUC random | AUC popularity-matched |\n|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a:.3f} | {b:.3f} |")


if __name__ == "__main__":
    main()
