#!/usr/bin/env bash
# The RL experiment of docs/results.md on a 2-core CPU: SmolLM2-135M + LoRA, SFT then GRPO, on
# MovieLens-100K and MicroLens-50k, evaluated on held-out users against the baselines.
# Usage: scripts/rl-cpu-experiment.sh [stage ...]   (default: all, about 1.5 h). Stages, run in
# this order: data, ml, ml-nothink, ml-eval, mic, mic-eval. Reports: docs/rl-eval-*.md and the
# generated sections of docs/results.md.
set -euo pipefail
cd "$(dirname "$0")/.."
V=.venv/bin/vragent
DB=${DB:-sqlite:///runs/rl/rl.sqlite}
export VRAGENT_POLICIES=${VRAGENT_POLICIES:-runs/policies} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
DATA=${VRAGENT_DATA_DIR:-../shared/data}
T="--threads 2 --db $DB"
stage() { [[ $# -eq 0 ]] && return 0; for s in "${STAGES[@]}"; do [[ $s == "$1" ]] && return 0; done; return 1; }
STAGES=("$@"); [[ $# -eq 0 ]] && STAGES=(data ml ml-eval ml-nothink mic mic-eval)
if stage data; then
  $V rl build-data --dataset movielens-100k --out runs/rl/movielens-data --eval-users 60 --train-users 800 --history-len 5
  $V rl build-data --dataset microlens --path "$DATA/microlens-100k" --out runs/rl/microlens-data --eval-users 60 --train-users 1000 --history-len 5
fi
if stage ml; then
  $V rl train --algo sft --data runs/rl/movielens-data --policy ml-sft --steps 20 --batch-size 4 --lr 5e-4 $T
  $V rl train --algo grpo --data runs/rl/movielens-data --policy ml-grpo --base-model policy:ml-sft --lr 5e-5 --steps 50 --prompts-per-step 1 --num-generations 4 --max-completion-length 96 $T
fi
if stage ml-nothink; then
  $V rl train --algo grpo --data runs/rl/movielens-data --policy ml-grpo-nothink --base-model policy:ml-sft --no-thinking --lr 5e-5 --steps 30 --prompts-per-step 1 --num-generations 4 --max-completion-length 40 $T
fi
if stage ml-eval; then
  pols=(--policy ml-sft --policy ml-grpo); [[ -d runs/policies/ml-grpo-nothink ]] && pols+=(--policy ml-grpo-nothink)
  $V rl eval --data runs/rl/movielens-data "${pols[@]}" --max-groups 10 --generate-groups 8 --max-new-tokens 96 --title "US-agent evaluation: MovieLens-100K" --report docs/rl-eval-movielens.md --results docs/results.md $T
fi
if stage mic; then
  $V rl train --algo sft --data runs/rl/microlens-data --policy mic-sft --steps 20 --batch-size 4 --lr 5e-4 $T
  $V rl train --algo grpo --data runs/rl/microlens-data --policy mic-grpo --base-model policy:mic-sft --lr 5e-5 --steps 30 --prompts-per-step 1 --num-generations 4 --max-completion-length 112 $T
fi
if stage mic-eval; then
  $V rl eval --data runs/rl/microlens-data --policy mic-sft --policy mic-grpo --max-groups 10 --generate-groups 8 --max-new-tokens 112 --title "US-agent evaluation: MicroLens-50k" --report docs/rl-eval-microlens.md --results docs/results.md $T
fi
