"""Finetuning and distillation of the LARGE models on ImageNet (spec §4.3; official
main_finetune.py with Train_Large.md), for TPU pods.

    python -m spikejax.main --config=configs/imagenet_large.py:finetune \
        --config.init_from=gs://.../mim_173m --workdir=...
    python -m spikejax.main --config=configs/imagenet_large.py:distill \
        --config.init_from=gs://.../ft_83m --config.distill.teacher=DIR --workdir=...
    python -m spikejax.main --config=configs/imagenet_large.py:finetune,runlocal --workdir=/tmp/x

``finetune``: ``spikformer12_768`` from a MIM checkpoint (``init_from``: encoder weights and
BN statistics; decoder dropped; layer scales and heads fresh), batch 1024 (128 x 8), LAMB,
lr = 6e-4 x 1024 / 256 = 2.4e-3, layer decay 0.75, 150 epochs (10 warmup), mixup 0.8 / cutmix
1.0, EMA 0.99996. Its first-stage width is 192 (the MIM model's; the official finetuning
model's 196 cannot load the MIM checkpoint, spec §8 trap 6): 171,579,824 parameters.
``distill``: ``spikformer12_512`` with the distillation head (83,015,952 parameters), batch
1568 (196 x 8), lr = 1e-3 x 1568 / 256 = 6.125e-3, 100 epochs (5 warmup), mixup 0.5, hard
distillation (alpha 0.5) from ``distill.teacher`` (any spikejax checkpoint; the paper used
CAFormer-B36, which is not available here).
Both: T = 1, D = 4, drop path 0.1, RandAugment rand-m9-mstd0.5-inc1, RandomResizedCrop 224,
flip, random erasing 0.25, label smoothing 0.1, cosine to 1e-6.
"""

import ml_collections
from ml_collections.config_dict import placeholder


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = set(filter(None, (arg or "finetune").split(",")))
  modes = args & {"finetune", "distill"}
  if len(modes) != 1:
    raise ValueError(f"choose one of finetune, distill; got {sorted(args)}")
  distill = modes.pop() == "distill"
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.task = "classify"
  c.dataset = "imagenet2012"
  c.data_dir = placeholder(str)
  c.train_split = "train"
  c.eval_split = "validation"
  c.image_size = 224
  c.channels = placeholder(int)
  c.augment = ml_collections.ConfigDict(dict(
      crop="rrc", flip=True, randaugment="rand-m9-mstd0.5-inc1", reprob=0.25, remode="pixel",
      mixup=0.5 if distill else 0.8, cutmix=1.0, label_smoothing=0.1))
  c.batch_size = 1568 if distill else 1024
  c.eval_batch_size = 1024

  c.model_name = "spikformer12_512" if distill else "spikformer12_768"
  c.model = ml_collections.ConfigDict()
  c.model.kd = distill
  c.model.drop_path_rate = 0.1
  if not distill:
    c.model.embed_dims = (192, 384, 768)
  c.init_from = placeholder(str)
  c.distill = ml_collections.ConfigDict()
  c.distill.teacher = placeholder(str)
  c.distill.alpha = 0.5

  c.mode = "sfa"
  c.spike = ml_collections.ConfigDict()
  c.spike.spike_max = 4
  c.spike.time_steps = 1
  c.spike.rounding = "half_up"
  c.spike.window = "open"

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.name = "lamb"
  c.optimizer.lr = (1e-3 if distill else 6e-4) * c.batch_size / 256
  c.optimizer.weight_decay = 0.05
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-6
  c.optimizer.grad_clip_norm = 1.0
  c.optimizer.layer_decay = 1.0 if distill else 0.75
  c.warmup_epochs = 5.0 if distill else 10.0
  c.min_lr = 1e-6
  c.num_epochs = 100.0 if distill else 150.0
  c.time_limit_minutes = placeholder(float)
  c.ema_decay = 0.99996
  c.stop_after_steps = placeholder(int)

  c.dtype = "bfloat16"
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 4

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
    c.model.embed_dims = (8, 16, 16)
    c.model.depth = 2
    c.dtype = "float32"
    c.mesh.fsdp = 2
    c.num_epochs = 1.0
    c.warmup_epochs = 0.0
    c.max_train_steps = 2
    c.max_eval_steps = 1
    c.log_every_steps = 1
    c.checkpoint_every_steps = 2
    c.progress_bar = False
  return c


def sweep(add):
  """Layer decay of the finetuning stage."""
  for decay in (0.65, 0.75, 0.85):
    add(**{"optimizer.layer_decay": decay})
