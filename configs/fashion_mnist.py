"""E-SpikeFormer with SFA (T=1, D=4) on Fashion-MNIST: the default main-job config.

    python -m spikejax.main --config=configs/fashion_mnist.py --workdir=workdirs/fmnist
    python -m spikejax.main --config=configs/fashion_mnist.py:runlocal --workdir=/tmp/smoke
    python -m spikejax.main --config=configs/fashion_mnist.py:vanilla --workdir=...  # binary LIF T=4

The default model is the paper's large E-SpikeFormer design (``spikformer12_512``, the 83M
model of spec §3/§4.1: conv stages with RepConv attention blocks, layer scale, drop path 0.1,
neurons rounding half up) scaled down to widths (32, 64, 128) and 4 transformer blocks for
32 px (2,251,066 parameters). ``base`` selects a scaled-down base model (``espikeformer_t``
widths 24/48/96/128, 2 + 1 blocks, 1,372,522 parameters) instead; measured curves of both are
in docs/results.md. The default trains with the random horizontal mirror and scores each test
image with its mirror (``eval_flip``, docs/training.md#test-time-views); ``base``,
``vanilla`` and ``long`` keep the recipes their measurements used.

Arguments (``:a,b``): ``runlocal`` (a few steps on tiny data), ``base`` (the base-family
recipe), ``vanilla`` (the paper's direct-training baseline: binary spikes, LIF, image repeated
over T=4 timesteps), ``long`` (a 118-minute budget with the data set's augmentation; measured
93.75 % best, 93.73 % final, docs/results.md), ``t1``/``t4`` (T = 1, the default, or T = 4;
also as ``timesteps=t4``). Any other argument is an error.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, runlocal=False, base=False, vanilla=False, long=False,
                       timesteps=common.one_of("t1", "t4"))
  c = common.trainer_defaults(dataset="fashion_mnist", channels=1)
  c.image_size = 32           # 28 px zero-padded to 32
  # No crop augmentation: in a 30-minute budget it slows learning more than it regularises
  # (measured: with pad-2 crop, flip and label smoothing 0.1 the base recipe reached 89.03 %,
  # without 90.06 %, 6 epochs each); the default trains with the random mirror alone (below).
  # batch_size 64 (the default): more updates in the budget; as fast per image as 128 here

  if a.base:
    c.model_name = "espikeformer_t"
    c.model.strides = (2, 2, 2, 1, 1)       # 32 -> 16, 8, 4, 4, 4 (16 tokens in stages 3-4)
    c.model.embed_dims = (24, 48, 96, 128)
    c.model.block_depths = (2, 1)           # block3, block4 (official t: 6, 2): 1.7x faster steps
  else:
    c.model_name = "spikformer12_512"
    c.model.embed_dims = (32, 64, 128)      # first stage at 16 channels
    c.model.depth = 4                       # transformer blocks (official: 12)
    c.model.strides = (2, 2, 2, 1)          # 32 -> 16, 8, 4, 4 px: 16 tokens
    c.model.kd = False
    c.model.drop_path_rate = 0.1

  c.mode = "vanilla" if a.vanilla else "sfa"
  c.spike.time_steps = 4 if (a.vanilla or a.timesteps == "t4") else 1
  # the LARGE neurons round half up with the open gradient window (spec §1.1); base: half-even
  c.spike.rounding = "half_even" if a.base else "half_up"
  c.spike.window = "closed" if a.base else "open"

  # The run length is planned from this machine's measured step rate so that the whole command
  # (start-up, compilation, training, evaluations, the final save) ends inside 29 minutes
  # (spikejax/train/budget.py); the schedule then anneals to its end on any machine.
  # ``--config.time_budget_minutes=0`` trains ``num_epochs`` instead.
  c.time_budget_minutes = 29.0
  if a.long:    # a 2-hour budget: about 4x the steps, long enough for augmentation to pay
    c.time_budget_minutes = 118.0
    c.augment = "default"     # the data set's: pad-2 random crop, flip, label smoothing 0.1
  c.num_epochs = 11.0 if a.base else 12.5
  c.firing_stats = True         # per-layer firing of each evaluation -> firing.json, eval/nsfr_*
  if not (a.base or a.vanilla or a.long):
    # the random mirror in training and at test time: each evaluation averages the logits of
    # the image and its mirror (measured: docs/results.md)
    c.augment = "flip"
    c.eval_flip = True

  if a.runlocal:
    common.apply_runlocal(c, eval_batch_size=32, max_train_steps=3, max_eval_steps=2,
                          progress_bar=True, time_limit_minutes=10.0,
                          time_budget_minutes=None)
    c.model.embed_dims = (8, 16, 16, 16) if a.base else (8, 16, 16)
    if not a.base:
      c.model.depth = 1
  return c


def sweep(add):
  """SFA D in {2, 4, 8} and the vanilla baseline (run with ``python -m launch.sweep``)."""
  for d in (2, 4, 8):
    add(**{"spike.spike_max": d})
  add(**{"mode": "vanilla", "spike.time_steps": 4})
