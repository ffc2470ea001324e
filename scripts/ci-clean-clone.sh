#!/usr/bin/env bash
# Reproduce CI locally: clone the committed tree into a temp folder beside a link to shared/,
# use a fresh asset cache, and run .ci/run there. Uncommitted changes are not included.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d /tmp/vragent-ci.XXXXXX)"
git clone -q "$repo" "$work/main"
ln -s "$(cd "$repo/.." && pwd)/shared" "$work/shared"
cd "$work/main"
echo "clean clone in $work/main (fresh VRAGENT_HOME=$work/home)"
CI=true VRAGENT_HOME="$work/home" bash .ci/run
