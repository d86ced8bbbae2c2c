#!/usr/bin/env bash
# Times the official Meta-SpikeFormer (V2) training step and spikejax's alternately on this
# machine (docs/benchmarks.md, "Meta-SpikeFormer side by side").
#   TORCH_PYTHON=/path/to/python-with-torch-and-spikingjelly \
#   V2_MIRROR=/path/to/Spike-Driven-Transformer-V2 bash launch/side_by_side_v2.sh [rounds]
# Each round, for widths 32/64/128/192 (official depths), 64 px, batch 8, 10 classes, 3 channels:
# the official code (../shared/tools/official_ref_v2.py bench: forward, backward, AdamW) at T = 4
# and T = 1, spikejax's V2 (LIF) at T = 4 and T = 1, and spikejax's --compare-modes on the same
# architecture (SFA T = 1, D = 4 against LIF T = 4: step-time and XLA memory ratios). Needs a
# quiet machine; prints one line per run.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${TORCH_PYTHON:?set TORCH_PYTHON to a python that has torch and spikingjelly 0.0.0.0.12}"
: "${V2_MIRROR:?set V2_MIRROR to the official repository (Spike-Driven-Transformer-V2)}"
REF=${OFFICIAL_REF_V2:-../shared/tools/official_ref_v2.py}
DIMS=32,64,128,192 RES=64 BATCH=8 STEPS=5
OPTS="{\"embed_dims\": [${DIMS//,/, }]}"
off() {  # T
  V2_MIRROR="$V2_MIRROR" "$TORCH_PYTHON" "$REF" bench --dims "$DIMS" --T "$1" --res "$RES" \
    --batch "$BATCH" --steps "$STEPS" --num-classes 10 2>&1 | tail -1
}
ours() {  # extra bench arguments
  JAX_PLATFORMS=cpu python -m spikejax.bench --model metaspikformer_15m --model-options "$OPTS" \
    --resolution "$RES" --batch "$BATCH" --num-classes 10 --train --steps "$STEPS" "$@" --json \
    2>/dev/null | tail -1
}
for i in $(seq "${1:-2}"); do
  for T in 4 1; do
    echo "[$i] official T=$T: $(off "$T")"
    echo "[$i] spikejax T=$T: $(ours --mode vanilla --time-steps "$T")"
  done
  echo "[$i] spikejax compare-modes: $(ours --compare-modes --time-steps 4 --spike-max 4)"
done
