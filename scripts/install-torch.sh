#!/usr/bin/env bash
# Install torch's CPU build into a Python environment, before the project itself.
#
#   scripts/install-torch.sh PYTHON [PIP-INSTALL-OPTIONS...]
#
# PYTHON is the environment's interpreter (`make setup` passes .venv/bin/python); the options
# go to every `pip install` (`make` passes -q; the tests pass --dry-run --report FILE).
#
# Why: pyproject.toml pins `torch==X.Y.Z`. On PyPI that is the standard Linux wheel, which
# depends on cuda-toolkit, nvidia-cudnn, nvidia-nccl and more: several GB a CPU user never
# needs. So this asks for `torch==X.Y.Z+cpu` by name (X.Y.Z read from the pin):
#   1. from the indexes and find-links pip is configured with (a machine that keeps the wheel
#      locally installs it from there and contacts nothing else);
#   2. only where that fails, from the PyTorch CPU wheel index as well
#      ($VRAGENT_TORCH_CPU_INDEX, default https://download.pytorch.org/whl/cpu).
# The project's own `torch==X.Y.Z` is then already satisfied (X.Y.Z+cpu is X.Y.Z), so
# installing the project pulls no other torch. The CUDA build: `make setup GPU=1` (the `gpu`
# extra), which skips this script.
set -euo pipefail

if (($# < 1)); then
    echo "usage: scripts/install-torch.sh PYTHON [PIP-INSTALL-OPTIONS...]" >&2
    exit 2
fi
python="$1"
shift
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="$(sed -n 's/^ *"torch==\([0-9][0-9.]*\)".*/\1/p' "$repo/pyproject.toml" | head -n 1)"
if [[ -z "$version" ]]; then
    echo "install-torch: error: $repo/pyproject.toml: no \"torch==X.Y.Z\" line in dependencies" >&2
    exit 2
fi
index="${VRAGENT_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
want="torch==$version+cpu"

if "$python" -m pip install "$@" "$want"; then
    echo "install-torch: $want from the configured indexes"
    exit 0
fi
echo "install-torch: $want is not on the configured indexes; trying $index as well" >&2
if "$python" -m pip install --extra-index-url "$index" "$@" "$want"; then
    echo "install-torch: $want from $index"
    exit 0
fi
echo "install-torch: error: $want is neither on the configured indexes nor on $index" >&2
exit 1
