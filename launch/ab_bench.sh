#!/usr/bin/env bash
# Same-machine A/B of the step time between an earlier revision and the working tree:
# alternates `python -m spikejax.bench` of both for `espikeformer_s` 224 px batch 8 and
# `espikeformer_t` 32 px batch 64, training and inference, ROUNDS times; one JSON line per run.
#   bash launch/ab_bench.sh REV [ROUNDS]      e.g. bash launch/ab_bench.sh 20afcb0 3 > ab.jsonl
#   AB_ONLY=espikeformer_t bash launch/ab_bench.sh REV [ROUNDS]   # only the cases naming it
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?give the earlier revision, e.g. 20afcb0}
ROUNDS=${2:-3}
. launch/ab_common.sh
if [ -n "${AB_ONLY:-}" ]; then   # e.g. AB_ONLY=espikeformer_t: only the cases naming it
  KEEP=(); for c in "${CASES[@]}"; do [[ "$c" == *"$AB_ONLY"* ]] && KEEP+=("$c"); done
  CASES=("${KEEP[@]}")
fi
for r in $(seq 1 "$ROUNDS"); do
  for c in "${CASES[@]}"; do
    for side in old new; do
      dir=$OLD; [ "$side" = new ] && dir=$NEW
      # python -m puts the current directory first on sys.path: each side runs its own tree
      out=$(cd "$dir" && "$PY" -m spikejax.bench $c --steps 10 --json | tail -1)
      echo "{\"round\": $r, \"side\": \"$side\", \"case\": \"$c\", \"result\": $out}"
    done
  done
done
