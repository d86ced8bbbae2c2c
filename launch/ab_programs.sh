#!/usr/bin/env bash
# Same-machine A/B of the *programs* rather than the step times: dumps the StableHLO that
# `python -m spikejax.bench` lowers for each A/B case (launch/ab_bench.sh's four) in an earlier
# revision and in the working tree, then compares the timed step's module of each pair
# (launch/ab_programs.py). The same module compiles to the same executable, so its speed can
# only differ by noise.
#   bash launch/ab_programs.sh REV        e.g. bash launch/ab_programs.sh 20afcb0
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?give the earlier revision, e.g. 20afcb0}
. launch/ab_common.sh
IR=$(mktemp -d)
i=0
for c in "${CASES[@]}"; do
  for side in old new; do
    dir=$OLD; [ "$side" = new ] && dir=$NEW
    # lowering is what is compared; the reduced compiler only makes the one step quicker
    (cd "$dir" && JAX_DUMP_IR_TO="$IR/$side/$i" JAX_INCLUDE_DEBUG_INFO_IN_DUMPS=false \
      JAX_DISABLE_MOST_OPTIMIZATIONS=1 "$PY" -m spikejax.bench $c --steps 1 --json >/dev/null)
  done
  "$PY" "$NEW/launch/ab_programs.py" "$IR/old/$i" "$IR/new/$i" --case "$c"
  i=$((i+1))
done
rm -rf "$IR"
