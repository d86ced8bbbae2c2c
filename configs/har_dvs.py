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
...; default ``independent``; also as ``temporal=if_soft``), ``runlocal`` (a tiny model for two
steps on a small data set). Any other argument is an error.
"""

import ml_collections

from configs import common

TEMPORAL = ("independent", "if_soft", "if_hard", "lif_soft", "lif_hard")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, temporal=common.one_of(*TEMPORAL), runlocal=False)
  # the clip flips every frame itself (spec §6.1); label smoothing 0.1 (spec §6.3)
  c = common.trainer_defaults(
      dataset="har_dvs", channels=2,
      augment=ml_collections.ConfigDict(dict(crop="none", flip=False, label_smoothing=0.1)))
  c.seed = 42
  c.image_size = 224
  c.frames = ml_collections.ConfigDict()
  c.frames.time_steps = 8
  c.batch_size = 72
  c.eval_batch_size = 72

  c.model_name = "espikeformer_dvs"

  c.spike.time_steps = c.frames.get_ref("time_steps")
  c.spike.norm = 1.0
  c.spike.temporal = a.temporal

  c.optimizer.lr = 4e-5 * c.batch_size / 256
  c.optimizer.weight_decay = 1e-2
  c.warmup_epochs = 10.0
  c.min_lr = 1e-6
  c.num_epochs = 100.0
  c.ema_decay = 0.999
  c.dtype = "bfloat16"
  c.checkpoint_every_steps = 2000

  if a.runlocal:
    common.apply_runlocal(c, batch_size=8, eval_batch_size=8, image_size=16)
    c.frames.time_steps = 2
    c.model.embed_dims = (8, 16, 16, 16)
    c.model.block_depths = (1, 1)
  return c
