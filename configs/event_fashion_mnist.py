"""E-SpikeFormer on emulated event-camera Fashion-MNIST (T frames, 2 polarity channels).

    python -m spikejax.main --config=configs/event_fashion_mnist.py --workdir=workdirs/evt
    python -m spikejax.main --config=configs/event_fashion_mnist.py:if_soft --workdir=...
    python -m launch.sweep --config=configs/event_fashion_mnist.py --workdir=workdirs/evt_modes

The data set ``event_fashion_mnist`` (``spikejax.data.event_datasets``) is Fashion-MNIST seen by
an emulated event camera making three saccades (N-MNIST geometry, 34x34 pixels, 300 ms); it is
built on first use from the local Fashion-MNIST files. Every result on it is on EMULATED events.
Each example becomes T = 4 equal-time frames of ON/OFF event counts.

Arguments (``:a,b``) choose the neuron dynamics between the T real timesteps (paper §4.1,
spec §6.2); at most one temporal mode (also as ``temporal=if_soft``):
  ``independent`` (default): SFA per frame, no membrane across frames (the official DVS code);
  ``if_soft``: SFA with the soft-reset residual carried to the next frame (IF, no leak);
  ``if_hard`` / ``lif_soft`` / ``lif_hard``: SFA inside each timestep, IF/LIF (tau 2) with
    hard/soft reset between timesteps;
  ``vanilla``: the binary direct-training baseline (LIF tau 2, hard reset, surrogate gradient;
    it sets the temporal mode to ``lif_hard``);
  ``runlocal``: a few steps of a tiny model.
Any other argument is an error.
"""

import ml_collections

from configs import common

TEMPORAL = ("independent", "if_soft", "if_hard", "lif_soft", "lif_hard")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, temporal=common.one_of(*TEMPORAL), vanilla=False, runlocal=False)
  c = common.trainer_defaults(dataset="event_fashion_mnist", channels=2)
  # image_size stays None: the frame side of the 34 px sensor
  c.frames = ml_collections.ConfigDict()
  c.frames.time_steps = 4
  c.frames.split_by = "time"         # equal-time bins ('count': equal event numbers)
  c.frames.mode = "count"            # events per pixel and polarity ('binary': 0/1)

  c.model_name = "espikeformer_t"
  c.model.strides = (2, 2, 2, 1, 1)       # 34 -> 17, 9, 5, 5, 5 (25 tokens in stages 3-4)
  c.model.embed_dims = (24, 48, 96, 128)
  c.model.block_depths = (1, 1)

  c.mode = "vanilla" if a.vanilla else "sfa"
  c.spike.time_steps = c.frames.get_ref("time_steps")
  c.spike.norm = 1.0                       # the official DVS model: no 1/D (spec §6.2)
  c.spike.temporal = "lif_hard" if a.vanilla else a.temporal

  c.warmup_epochs = 0.1
  c.firing_stats = True

  if a.runlocal:
    common.apply_runlocal(c, eval_batch_size=32, image_size=16, max_train_steps=3,
                          max_eval_steps=2, progress_bar=True, time_limit_minutes=10.0)
    c.model.embed_dims = (8, 16, 16, 16)
  return c


def sweep(add):
  """Every temporal mode with SFA, and the vanilla binary baseline, at one budget."""
  for t in TEMPORAL:
    add(**{"spike.temporal": t})
  add(**{"mode": "vanilla", "spike.temporal": "lif_hard"})
