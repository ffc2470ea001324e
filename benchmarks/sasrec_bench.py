"""SASRec cost on MicroLens-50k: seconds per epoch and peak memory of the ID and text towers.

Loads ``$VRAGENT_DATA_DIR/microlens-100k`` (the loader picks the MicroLens-50k pairs there),
splits it leave-one-out (min length 5, cut to 13) and, each in its own process so peak RSS is
per run:

* ``embed``: embeds every catalogue title with MiniLM into an empty temporary cache;
* ``id`` / ``text``: fits SASRec on the training part (the text tower reads the cache the
  ``embed`` run filled), then reports HR@10 / NDCG@10 on the validation target over up to
  ``--eval-users`` users, with the training history masked (the reference's validation).

    .venv/bin/python benchmarks/sasrec_bench.py [--epochs 1] [--dim 64] [--users N] [--threads 1]

The machine may be shared, so the figures are rough.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def _peak_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load(args: argparse.Namespace):
    from vragent.environments.datasets.microlens import load_microlens
    from vragent.environments.splits import leave_one_out

    folder = Path(os.environ.get("VRAGENT_DATA_DIR", "../shared/data")) / "microlens-100k"
    data = load_microlens(folder)
    split = leave_one_out(data, min_len=5, max_len=13)
    users = split.users
    if args.users:
        rng = np.random.default_rng(0)
        users = sorted(rng.choice(users, size=min(args.users, len(users)), replace=False).tolist())
    return data, split, users


def _child_embed(args: argparse.Namespace) -> dict:
    import torch
    from vragent.environments.text_embeddings import SentenceEncoder, encode_cached

    torch.set_num_threads(args.threads)
    data, _, _ = _load(args)
    texts = data.items["title"].fillna("").astype(str).tolist()
    rss0 = _peak_rss_mib()
    t0 = time.perf_counter()
    enc = SentenceEncoder("minilm", max_tokens=args.text_max_tokens)
    _ = enc.model
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    matrix = encode_cached(texts, enc, args.cache_dir)
    return {"run": "embed", "items": len(texts), "dim": int(matrix.shape[1]),
            "load_s": load_s, "embed_s": time.perf_counter() - t1,
            "rss_data_mib": rss0, "peak_rss_mib": _peak_rss_mib()}


def _child_fit(args: argparse.Namespace) -> dict:
    from vragent.environments.recommenders.sasrec import SASRecRecommender

    data, split, users = _load(args)
    train = split.train_interactions()
    train = train[train["user_id"].isin(users)]
    items = data.items["item_id"].to_numpy()
    rss0 = _peak_rss_mib()
    model = SASRecRecommender(seed=0, tower=args.child, dim=args.dim, epochs=args.epochs,
                              batch_size=args.batch_size, threads=args.threads,
                              embed_cache_dir=args.cache_dir, text_max_tokens=args.text_max_tokens,
                              verbose=True)
    if args.child == "text":
        model.set_item_text(dict(zip(data.items["item_id"].tolist(),
                                     data.items["title"].fillna("").astype(str), strict=True)))
    t0 = time.perf_counter()
    model.fit(train, items=items)
    fit_s = time.perf_counter() - t0
    epoch_s = [h["seconds"] for h in model.history_]

    eval_users = users[: args.eval_users]
    t1 = time.perf_counter()
    rec = model.recommend(eval_users, 10)
    score_s = time.perf_counter() - t1
    truth = np.array([split.valid[u] for u in eval_users])
    hit = rec.items == truth[:, None]
    pos = hit.argmax(axis=1)
    ndcg = np.where(hit.any(axis=1), 1.0 / np.log2(pos + 2), 0.0)
    return {"run": args.child, "users": len(users), "train_rows": len(train),
            "items": len(items), "epochs": args.epochs,
            "epoch_s": float(np.mean(epoch_s)) if epoch_s else float("nan"),
            "fit_s": fit_s, "loss": model.history_[-1]["loss"] if model.history_ else None,
            "eval_users": len(eval_users), "score_s": score_s,
            "hr10": float(hit.any(axis=1).mean()), "ndcg10": float(ndcg.mean()),
            "rss_data_mib": rss0, "peak_rss_mib": _peak_rss_mib()}


def _spawn(run: str, args: argparse.Namespace, cache_dir: str) -> dict:
    cmd = [sys.executable, __file__, "--child", run, "--cache-dir", cache_dir,
           "--epochs", str(args.epochs), "--dim", str(args.dim), "--users", str(args.users),
           "--threads", str(args.threads), "--batch-size", str(args.batch_size),
           "--eval-users", str(args.eval_users), "--text-max-tokens", str(args.text_max_tokens)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads),
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--users", type=int, default=0, help="random subset of users (0 = all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--eval-users", type=int, default=5000)
    ap.add_argument("--text-max-tokens", type=int, default=32)
    ap.add_argument("--child", choices=["embed", "id", "text"], help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        result = _child_embed(args) if args.child == "embed" else _child_fit(args)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="sasrec-bench-") as cache_dir:
        emb = _spawn("embed", args, cache_dir)
        fits = [_spawn(t, args, cache_dir) for t in ("id", "text")]

    print(f"\nMicroLens-50k, leave-one-out (5, 13); dim {args.dim}, batch {args.batch_size}, "
          f"{args.threads} thread(s); shared CPU, figures are rough")
    print(f"\nMiniLM catalogue embedding (cold cache): {emb['items']} titles -> {emb['dim']}-d, "
          f"model load {emb['load_s']:.1f} s, embed {emb['embed_s']:.1f} s "
          f"({emb['items'] / emb['embed_s']:.0f} titles/s), peak RSS {emb['peak_rss_mib']:.0f} MiB")
    head = (f"\n{'tower':<6}{'users':>7}{'items':>7}{'epochs':>7}{'s/epoch':>9}{'fit s':>8}"
            f"{'loss':>8}{'HR@10':>7}{'NDCG@10':>8}{'score s':>8}{'RSS data':>10}{'peak RSS':>10}")
    print(head)
    for r in fits:
        loss = f"{r['loss']:.3f}" if r["loss"] is not None else "-"
        print(f"{r['run']:<6}{r['users']:>7}{r['items']:>7}{r['epochs']:>7}{r['epoch_s']:>9.1f}"
              f"{r['fit_s']:>8.1f}{loss:>8}{r['hr10']:>7.3f}{r['ndcg10']:>8.3f}"
              f"{r['score_s']:>8.1f}{r['rss_data_mib']:>9.0f}M{r['peak_rss_mib']:>9.0f}M")
    print(f"\n(HR/NDCG on the validation target of {fits[0]['eval_users']} users, train history "
          "masked; RSS data = peak after loading the data, before the model)")


if __name__ == "__main__":
    main()
