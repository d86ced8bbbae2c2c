"""Official HAR-DVS recipe of the DVS E-SpikeFormer (spec §6.2, §6.3; DVS ``train.sh``).

    python -m spikejax.main --config=configs/har_dvs.py --workdir=... --config.data_dir=...
    python -m spikejax.main --config=configs/har_dvs.py:if_soft --workdir=...
    python -m spikejax.main --config=configs/har_dvs.py:runlocal --workdir=... --config.data_dir=...

Needs the tfds ``har_dvs`` data set built from your copy of HAR-DVS (``spikejax.data.
dvs_datasets.prepare_har_dvs(manual_dir, data_dir)``; no HAR-DVS data exists on these machines).

Model ``espikeformer_dvs`` (``Efficient_Spiking_Transformer_scaling_8_19M``: 2 input channels,
layer scales 1e-6, D_Norm 1, 300 classes, 18,740,004 parameters). T = 8 frames of the official
clip (random consecutive frames, 2 binary channels at 224 px), D = 4, frames independent (the
official Q_IFNode is reset after every batch). 3 x 24 = 72 per batch; AdamW, lr = 4e-5 x 72 /
256, weight decay 1e-2 on ndim > 1 tensors, 100 epochs, 10 warmup, cosine to 1e-6, label
smoothing 0.1, max-norm clip 1.0, EMA 0.999 evaluated beside the raw weights, seed 42. fp16
autocast in the official code; bfloat16 here.

Arguments: a temporal mode of ``configs/event_fashion_mnist.py`` (``if_soft``, ``lif_hard``,
...; default ``independent``), ``runlocal`` (a tiny model for two steps on a small data set).
"""

import ml_collections
from ml_collections.config_dict import placeholder

TEMPORAL = ("independent", "if_soft", "if_hard", "lif_soft", "lif_hard")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = set(filter(None, (arg or "").split(",")))
  unknown = args - set(TEMPORAL) - {"runlocal"}
  if unknown:
    raise ValueError(f"unknown config argument(s) {sorted(unknown)}; use one of "
                     f"{list(TEMPORAL)} and/or 'runlocal'")
  temporal = sorted(args & set(TEMPORAL))
  if len(temporal) > 1:
    raise ValueError(f"choose one temporal mode, got {temporal}")
  c = ml_collections.ConfigDict()
  c.seed = 42
  c.dataset = "har_dvs"
  c.data_dir = placeholder(str)
  c.train_split = "train"
  c.eval_split = "test"
  c.image_size = 224
  c.channels = 2
  c.frames = ml_collections.ConfigDict()
  c.frames.time_steps = 8
  # the clip flips every frame itself (spec §6.1); label smoothing 0.1 (spec §6.3)
  c.augment = ml_collections.ConfigDict(dict(crop="none", flip=False, label_smoothing=0.1))
  c.batch_size = 72
  c.eval_batch_size = 72

  c.model_name = "espikeformer_dvs"
  c.model = ml_collections.ConfigDict()

  c.mode = "sfa"
  c.spike = ml_collections.ConfigDict()
  c.spike.time_steps = c.frames.get_ref("time_steps")
  c.spike.spike_max = 4
  c.spike.norm = 1.0
  c.spike.rounding = "half_even"
  c.spike.temporal = temporal[0] if temporal else "independent"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "adamw"
  c.optimizer.lr = 4e-5 * c.batch_size / 256
  c.optimizer.weight_decay = 1e-2
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-8
  c.optimizer.grad_clip_norm = 1.0
  c.optimizer.layer_decay = 1.0
  c.warmup_epochs = 10.0
  c.min_lr = 1e-6
  c.num_epochs = 100.0
  c.time_limit_minutes = placeholder(float)
  c.ema_decay = 0.999

  c.dtype = "bfloat16"
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1

  c.log_every_steps = 50
  c.eval_every_epochs = 1
  c.firing_stats = False
  c.checkpoint_every_steps = 2000
  c.keep_checkpoints = 3
  c.progress_bar = True
  c.stop_after_steps = placeholder(int)
  c.max_train_steps = placeholder(int)
  c.max_eval_steps = placeholder(int)
  if "runlocal" in args:
    c.batch_size = 8
    c.eval_batch_size = 8
    c.image_size = 16
    c.frames.time_steps = 2
    c.model.embed_dims = (8, 16, 16, 16)
    c.model.block_depths = (1, 1)
    c.dtype = "float32"
    c.num_epochs = 1.0
    c.warmup_epochs = 0.0
    c.max_train_steps = 2
    c.max_eval_steps = 1
    c.log_every_steps = 1
    c.checkpoint_every_steps = 2
    c.progress_bar = False
  return c
