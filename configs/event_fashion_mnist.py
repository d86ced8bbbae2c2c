"""E-SpikeFormer on emulated event-camera Fashion-MNIST (T frames, 2 polarity channels).

    python -m spikejax.main --config=configs/event_fashion_mnist.py --workdir=workdirs/evt
    python -m spikejax.main --config=configs/event_fashion_mnist.py:if_soft --workdir=...
    python -m launch.sweep --config=configs/event_fashion_mnist.py --workdir=workdirs/evt_modes

The data set ``event_fashion_mnist`` (``spikejax.data.event_datasets``) is Fashion-MNIST seen by
an emulated event camera making three saccades (N-MNIST geometry, 34x34 pixels, 300 ms); it is
built on first use from the local Fashion-MNIST files. Every result on it is on EMULATED events.
Each example becomes T = 4 equal-time frames of ON/OFF event counts.

Arguments (``:a,b``) choose the neuron dynamics between the T real timesteps (paper §4.1,
spec §6.2):
  ``independent`` (default): SFA per frame, no membrane across frames (the official DVS code);
  ``if_soft``: SFA with the soft-reset residual carried to the next frame (IF, no leak);
  ``if_hard`` / ``lif_soft`` / ``lif_hard``: SFA inside each timestep, IF/LIF (tau 2) with
    hard/soft reset between timesteps;
  ``vanilla``: the binary direct-training baseline (LIF tau 2, hard reset, surrogate gradient);
  ``runlocal``: a few steps of a tiny model.
"""

import ml_collections
from ml_collections.config_dict import placeholder

TEMPORAL = ("independent", "if_soft", "if_hard", "lif_soft", "lif_hard")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = set(filter(None, (arg or "").split(",")))
  unknown = args - set(TEMPORAL) - {"vanilla", "runlocal"}
  if unknown:
    raise ValueError(f"unknown config argument(s) {sorted(unknown)}; use any of "
                     f"{list(TEMPORAL) + ['vanilla', 'runlocal']}")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = "event_fashion_mnist"
  c.data_dir = placeholder(str)
  c.train_split = "train"
  c.eval_split = "test"
  c.image_size = placeholder(int)   # frame side; default the 34 px sensor
  c.channels = 2
  c.frames = ml_collections.ConfigDict()
  c.frames.time_steps = 4
  c.frames.split_by = "time"         # equal-time bins ('count': equal event numbers)
  c.frames.mode = "count"            # events per pixel and polarity ('binary': 0/1)
  c.augment = "none"
  c.batch_size = 64
  c.eval_batch_size = 500

  c.model_name = "espikeformer_t"
  c.model = ml_collections.ConfigDict()
  c.model.strides = (2, 2, 2, 1, 1)       # 34 -> 17, 9, 5, 5, 5 (25 tokens in stages 3-4)
  c.model.embed_dims = (24, 48, 96, 128)
  c.model.block_depths = (1, 1)

  temporal = [a for a in args if a in TEMPORAL]
  if len(temporal) > 1:
    raise ValueError(f"choose one temporal mode, got {sorted(temporal)}")
  c.mode = "vanilla" if "vanilla" in args else "sfa"
  c.spike = ml_collections.ConfigDict()
  c.spike.time_steps = c.frames.get_ref("time_steps")
  c.spike.spike_max = 4                    # D
  c.spike.norm = 1.0                       # the official DVS model: no 1/D (spec §6.2)
  c.spike.rounding = "half_even"
  if c.mode == "vanilla":
    c.spike.temporal = "lif_hard"
  else:
    c.spike.temporal = temporal[0] if temporal else "independent"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"
  c.optimizer.lr = 3e-3
  c.optimizer.weight_decay = 0.05
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.grad_clip_norm = 1.0
  c.optimizer.layer_decay = 1.0
  c.warmup_epochs = 0.1
  c.min_lr = 1e-5
  c.num_epochs = 1.0
  c.time_limit_minutes = placeholder(float)
  c.ema_decay = 0.0

  c.dtype = "float32"
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1

  c.log_every_steps = 50
  c.eval_every_epochs = 1
  c.firing_stats = True
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 3
  c.progress_bar = True

  c.stop_after_steps = placeholder(int)
  if "runlocal" in args:
    c.batch_size = 16
    c.eval_batch_size = 32
    c.model.embed_dims = (8, 16, 16, 16)
    c.image_size = 16
    c.num_epochs = 1.0
    c.max_train_steps = 3
    c.max_eval_steps = 2
    c.warmup_epochs = 0.0
    c.log_every_steps = 1
    c.checkpoint_every_steps = 2
    c.time_limit_minutes = 10.0
  else:
    c.max_train_steps = placeholder(int)
    c.max_eval_steps = placeholder(int)
  return c


def sweep(add):
  """Every temporal mode with SFA, and the vanilla binary baseline, at one budget."""
  for t in TEMPORAL:
    add(**{"spike.temporal": t})
  add(**{"mode": "vanilla", "spike.temporal": "lif_hard"})
