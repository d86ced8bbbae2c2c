"""The paper's Table V ablation at small scale on Fashion-MNIST (addendum A.4, A.7).

    python -m launch.sweep --config=configs/table5_fashion_mnist.py --workdir=workdirs/table5
    python -m launch.table5 --workdir=workdirs/table5          # the table (bench, energy)
    python -m spikejax.main --config=configs/table5_fashion_mnist.py:v2_t4 --workdir=...  # one row

The four rows of Table V, on one architecture scale and one data order (seed 0, batch 64, the
same pipeline for every row):

=========  ===========================  =======================================  ==========
row        paper (ImageNet)             model                                    neuron
=========  ===========================  =======================================  ==========
``v2_t1``  Meta-SpikeFormer 1x1         ``metaspikformer_15m`` widths below      V2 LIF, T=1
``v2_t4``  Meta-SpikeFormer 4x1         ``metaspikformer_15m`` widths below      V2 LIF, T=4
``v2_sfa`` + SFA training 1x4           ``metaspikformer_15m`` widths below      SFA T=1, D=4
``e_sfa``  + E-SpikeFormer arch. 1x4    ``espikeformer_t`` widths below          SFA T=1, D=4
=========  ===========================  =======================================  ==========

Matched widths: embed_dims (24, 48, 96, 128), conv stages (1, 1, 2) blocks, transformer stages
(2, 1) blocks, strides (2, 2, 2, 1, 1) (32 px -> 16, 8, 4, 4, 4: 16 tokens), 8 heads, MLP ratio
4 -- the scaled-down base model of ``configs/fashion_mnist.py:base``. The SFA rows use the V3
BASE conventions (round half to even, closed gradient window); the V2 rows the official V2 LIF
(tau 2, hard reset, sigmoid surrogate). 1 epoch (``epochs=2`` for two), AdamW 3e-3, no augmentation, an evaluation
every 235 steps (a quarter epoch) for the equal-wall-time comparison.

Arguments: the row (``e_sfa``, the default, ``v2_t1``, ``v2_t4``, ``v2_sfa``; also
``row=...``), ``epochs=<float>``, ``runlocal`` (two steps on tiny widths). Anything else is an
error.
"""

import ml_collections

from configs import common

# row -> (model, mode, T); the SFA rows use D = spike.spike_max = 4
ROWS = {
    "v2_t1": ("metaspikformer_15m", "vanilla", 1),
    "v2_t4": ("metaspikformer_15m", "vanilla", 4),
    "v2_sfa": ("metaspikformer_15m", "sfa", 1),
    "e_sfa": ("espikeformer_t", "sfa", 1),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, row=common.one_of("e_sfa", "v2_t1", "v2_t4", "v2_sfa"),
                       epochs=1.0, runlocal=False)
  model_name, mode, time_steps = ROWS[a.row]
  c = common.trainer_defaults(dataset="fashion_mnist", channels=1, mode=mode,
                              model_name=model_name)
  c.image_size = 32           # 28 px zero-padded to 32
  c.model.embed_dims = (24, 48, 96, 128)
  c.model.block_depths = (2, 1)
  c.model.strides = (2, 2, 2, 1, 1)
  c.spike.time_steps = time_steps
  c.spike.spike_max = 4
  c.spike.rounding = "half_even"
  c.spike.window = "closed"
  c.num_epochs = a.epochs
  c.warmup_epochs = 0.25
  c.eval_every_steps = 235
  c.firing_stats = True
  c.progress_bar = False
  if a.runlocal:
    common.apply_runlocal(c, eval_batch_size=32, eval_every_steps=None)
    c.model.embed_dims = (8, 16, 16, 16)
    c.model.block_depths = (1, 1)
  return c


def sweep(add):
  """The four rows of Table V, in the paper's order."""
  for row in ("v2_t1", "v2_t4", "v2_sfa", "e_sfa"):
    model_name, mode, time_steps = ROWS[row]
    add(**{"model_name": model_name, "mode": mode, "spike.time_steps": time_steps})
