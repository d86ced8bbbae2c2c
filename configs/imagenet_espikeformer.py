"""Official ImageNet recipe of the E-SpikeFormer base models (spec §5; Train_Base.md).

    python -m spikejax.main --config=configs/imagenet_espikeformer.py:s --workdir=...
    python -m spikejax.main --config=configs/imagenet_espikeformer.py:m,d8 --workdir=...
    python -m spikejax.main --config=configs/imagenet_espikeformer.py:s,runlocal --workdir=...

Arguments: one of ``t``/``s``/``m``/``l`` (model size, default ``s``; also as ``size=m``),
``d8`` (D = 8 instead of 4), ``runlocal`` (a tiny model for two steps, e.g. under
``tfds.testing.mock_data``). Any other argument is an error.

Recipe: T = 1, D = 4; global batch 2048 (256 x 8 GPUs); LAMB (timm: global-norm clip 1.0,
trust ratio clipped at 1 on decayed tensors), lr = 6e-4 x 2048 / 256 = 4.8e-3, weight decay
0.05 on ndim > 1 tensors; 200 epochs, 5 warmup epochs, per-iteration cosine to 1e-6; label
smoothing 0.1; RandomResizedCrop 224 + flip + RandAugment rand-m9-mstd0.5-inc1 + random
erasing 0.25; no mixup/cutmix, no EMA, no drop path.
"""

import ml_collections

from configs import common

SIZES = {"t": "espikeformer_t", "s": "espikeformer_s", "m": "espikeformer_m",
         "l": "espikeformer_l"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, size=common.one_of(*SIZES, default="s"), d8=False, runlocal=False)
  c = common.trainer_defaults(
      dataset="imagenet2012", eval_split="validation",
      augment=ml_collections.ConfigDict(dict(
          crop="rrc", flip=True, randaugment="rand-m9-mstd0.5-inc1", reprob=0.25,
          remode="pixel", mixup=0.0, cutmix=0.0, label_smoothing=0.1)))
  c.image_size = 224
  c.batch_size = 2048
  c.eval_batch_size = 1000

  c.model_name = SIZES[a.size]
  c.model.strides = (2, 2, 2, 2, 1)

  c.spike.spike_max = 8 if a.d8 else 4

  c.optimizer.name = "lamb"
  c.optimizer.lr = 6e-4 * c.batch_size / 256
  c.optimizer.eps = 1e-6
  c.optimizer.grad_clip_norm = 1.0      # LAMB's own global-norm clip
  c.warmup_epochs = 5.0
  c.min_lr = 1e-6
  c.num_epochs = 200.0

  c.dtype = "bfloat16"
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000

  if a.runlocal:
    common.apply_runlocal(c, image_size=64)
    c.model.embed_dims = (8, 16, 16, 16)
    c.model.block_depths = (1, 1)
  return c


def sweep(add):
  """The paper's base models at D = 4 and D = 8 (T = 1)."""
  for size in ("s", "m", "l"):
    for d in (4, 8):
      add(**{"model_name": SIZES[size], "spike.spike_max": d})
