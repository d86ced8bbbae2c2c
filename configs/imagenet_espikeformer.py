"""Official ImageNet recipe of the E-SpikeFormer base models (spec §5; Train_Base.md).

    python -m spikejax.main --config=configs/imagenet_espikeformer.py:s --workdir=...
    python -m spikejax.main --config=configs/imagenet_espikeformer.py:m,d8 --workdir=...
    python -m spikejax.main --config=configs/imagenet_espikeformer.py:s,runlocal --workdir=...

Arguments: one of ``t``/``s``/``m``/``l`` (model size), ``d8`` (D = 8 instead of 4),
``runlocal`` (a tiny model for two steps, e.g. under ``tfds.testing.mock_data``).

Recipe: T = 1, D = 4; global batch 2048 (256 x 8 GPUs); LAMB (timm: global-norm clip 1.0,
trust ratio clipped at 1 on decayed tensors), lr = 6e-4 x 2048 / 256 = 4.8e-3, weight decay
0.05 on ndim > 1 tensors; 200 epochs, 5 warmup epochs, per-iteration cosine to 1e-6; label
smoothing 0.1; RandomResizedCrop 224 + flip + RandAugment rand-m9-mstd0.5-inc1 + random
erasing 0.25; no mixup/cutmix, no EMA, no drop path.
"""

import ml_collections
from ml_collections.config_dict import placeholder

SIZES = {"t": "espikeformer_t", "s": "espikeformer_s", "m": "espikeformer_m",
         "l": "espikeformer_l"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = set(filter(None, (arg or "s").split(",")))
  sizes = args & set(SIZES)
  if len(sizes) > 1:
    raise ValueError(f"choose one model size of {sorted(SIZES)}, got {sorted(sizes)}")
  size = sizes.pop() if sizes else "s"
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.dataset = "imagenet2012"
  c.data_dir = placeholder(str)
  c.train_split = "train"
  c.eval_split = "validation"
  c.image_size = 224
  c.channels = placeholder(int)
  c.augment = ml_collections.ConfigDict(dict(
      crop="rrc", flip=True, randaugment="rand-m9-mstd0.5-inc1", reprob=0.25, remode="pixel",
      mixup=0.0, cutmix=0.0, label_smoothing=0.1))
  c.batch_size = 2048
  c.eval_batch_size = 1000

  c.model_name = SIZES[size]
  c.model = ml_collections.ConfigDict()
  c.model.strides = (2, 2, 2, 2, 1)

  c.mode = "sfa"
  c.spike = ml_collections.ConfigDict()
  c.spike.spike_max = 8 if "d8" in args else 4
  c.spike.time_steps = 1
  c.spike.rounding = "half_even"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "lamb"
  c.optimizer.lr = 6e-4 * c.batch_size / 256
  c.optimizer.weight_decay = 0.05
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-6
  c.optimizer.grad_clip_norm = 1.0      # LAMB's own global-norm clip
  c.optimizer.layer_decay = 1.0
  c.warmup_epochs = 5.0
  c.min_lr = 1e-6
  c.num_epochs = 200.0
  c.time_limit_minutes = placeholder(float)
  c.ema_decay = 0.0
  c.stop_after_steps = placeholder(int)

  c.dtype = "bfloat16"
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1

  c.log_every_steps = 100
  c.eval_every_epochs = 1
  c.checkpoint_every_steps = 2000
  c.keep_checkpoints = 3
  c.progress_bar = True
  c.max_train_steps = placeholder(int)
  c.max_eval_steps = placeholder(int)

  if "runlocal" in args:
    c.batch_size = 16
    c.eval_batch_size = 16
    c.image_size = 64
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


def sweep(add):
  """The paper's base models at D = 4 and D = 8 (T = 1)."""
  for size in ("s", "m", "l"):
    for d in (4, 8):
      add(**{"model_name": SIZES[size], "spike.spike_max": d})
