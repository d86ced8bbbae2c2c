#!/usr/bin/env bash
# Times the official PyTorch code and spikejax alternately on this machine (docs/benchmarks.md, "Side by side").
#   TORCH_PYTHON=/path/to/python-with-torch V3_MIRROR=/path/to/Spike-Driven-Transformer-V3 \
#     bash launch/side_by_side.sh [rounds]
# Each round, for `s` at 224 px batch 8 and `t` at 32 px batch 64: the official code as it is and
# with tcmalloc preloaded (../shared/tools/official_ref.py bench: training and inference), then
# spikejax training and inference (its own re-exec with tcmalloc) and training with
# SPIKEJAX_MALLOC=system. Needs a quiet machine; prints one line per run.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TORCH_PYTHON:?set TORCH_PYTHON to a python that has torch}"
: "${V3_MIRROR:?set V3_MIRROR to the official repository (a checkout of BICLab Spike-Driven-Transformer-V3)}"
REF=${OFFICIAL_REF:-../shared/tools/official_ref.py}
TC=$(ls /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 2>/dev/null | head -1 || true)
off() {  # env model res batch steps
  env "$1" V3_MIRROR="$V3_MIRROR" "$TORCH_PYTHON" "$REF" bench --model "$2" --res "$3" \
    --batch "$4" --steps "$5" 2>&1 | tail -1
}
ours() {  # env model res batch steps [--train]
  env "$1" JAX_PLATFORMS=cpu python -m spikejax.bench --model "espikeformer_$2" --resolution "$3" \
    --batch "$4" --steps "$5" ${6:-} --json 2>/dev/null | tail -1 | python -c "import json, sys
d = json.loads(sys.stdin.read())
print('spikejax', d['model'], d['resolution'], d['batch'], 'train' if d['train'] else 'infer',
      'median', d['step_median_s'], 'min', d['step_min_s'], 'malloc', d['host_malloc'])"
}
for i in $(seq "${1:-2}"); do
  for cfg in "s 224 8 5" "t 32 64 10"; do
    set -- $cfg
    echo "[$i] official: $(off SPIKEJAX_UNUSED=1 "$@")"
    [ -n "$TC" ] && echo "[$i] official + tcmalloc: $(off LD_PRELOAD="$TC" "$@")"
    echo "[$i] $(ours SPIKEJAX_UNUSED=1 "$@" --train)"
    echo "[$i] $(ours SPIKEJAX_UNUSED=1 "$@")"
    echo "[$i] system malloc: $(ours SPIKEJAX_MALLOC=system "$@" --train)"
  done
done
