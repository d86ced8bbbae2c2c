"""The official Meta-SpikeFormer (V2) ImageNet recipe (addendum A.6; V2 README, train.sh,
train_finetune_from_t1_to_t4.sh), the baseline of the paper's Table V.

    python -m spikejax.main --config=configs/imagenet_metaspikformer.py:stage1 --workdir=WD1
    python -m spikejax.main --config=configs/imagenet_metaspikformer.py:stage2 \\
        --config.init_from=WD1 --config.distill.teacher=TEACHER --workdir=WD2
    python -m spikejax.main --config=configs/imagenet_metaspikformer.py:stage1,runlocal --workdir=/tmp/x

Arguments: ``stage1`` (the default), ``stage2`` or ``sfa`` (also ``stage=...``; ``sfa`` is the
"+ SFA training" row: the same architecture with SFA neurons, T = 1, D = 4, stage 1's recipe);
``15m``, ``31m`` or ``55m`` (model size, default ``55m`` as the official scripts; also
``size=31m``); ``runlocal`` (a tiny model for two steps, e.g. under ``tfds.testing.mock_data``).
Any other argument is an error.

``stage1``: T = 1 from scratch; batch 1024 (128 x 8); LAMB (timm: trust ratio clipped, global
norm clip 1.0), lr = 6e-4 x 1024 / 256 = 2.4e-3, weight decay 0.05 on ndim > 1 tensors, no layer
decay; 200 epochs, 10 warmup, per-iteration cosine to 1e-6; label smoothing 0.1; RandomResizedCrop
224 + flip + RandAugment rand-m9-mstd0.5-inc1 + random erasing 0.25 (pixel); no mixup/cutmix;
eval resize 256 -> center crop 224 (crop_pct 224/256); no drop path (the official CLI default
is never passed to the model).
``stage2``: T = 4 finetuned from stage 1 (``init_from``; ``head_kd`` is fresh) with ``kd=True``;
batch 192 (24 x 8), lr = 2e-5 x 192 / 256 = 1.5e-5, 50 epochs, 5 warmup; loss 0.5 LS-CE(head) +
0.5 CE(head_kd, argmax of the teacher) with ``distill.teacher`` (the paper's CAFormer-B36 is not
available here: any spikejax checkpoint; without a teacher ``head_kd`` learns the labels).
"""

import ml_collections
from ml_collections.config_dict import placeholder

from configs import common

SIZES = {"15m": "metaspikformer_15m", "31m": "metaspikformer_31m", "55m": "metaspikformer_55m"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, stage=common.one_of("stage1", "stage2", "sfa"),
                       size=common.one_of(*SIZES, default="55m"), runlocal=False)
  stage2, sfa = a.stage == "stage2", a.stage == "sfa"
  c = common.trainer_defaults(
      dataset="imagenet2012", eval_split="validation", mode="sfa" if sfa else "vanilla",
      augment=ml_collections.ConfigDict(dict(
          crop="rrc", flip=True, randaugment="rand-m9-mstd0.5-inc1", reprob=0.25,
          remode="pixel", mixup=0.0, cutmix=0.0, label_smoothing=0.1)))
  c.image_size = 224
  c.crop_pct = 224 / 256                # eval: resize 256, center crop 224
  c.batch_size = 192 if stage2 else 1024
  c.eval_batch_size = 1000

  c.model_name = SIZES[a.size]
  c.model.kd = stage2
  c.spike.time_steps = 4 if stage2 else 1
  c.spike.spike_max = 4
  if stage2:
    c.distill = ml_collections.ConfigDict()
    c.distill.teacher = placeholder(str)
    c.distill.alpha = 0.5

  c.optimizer.name = "lamb"
  c.optimizer.lr = (2e-5 if stage2 else 6e-4) * c.batch_size / 256
  c.optimizer.eps = 1e-6
  c.optimizer.grad_clip_norm = 1.0      # LAMB's own global-norm clip
  c.warmup_epochs = 5.0 if stage2 else 10.0
  c.min_lr = 1e-6
  c.num_epochs = 50.0 if stage2 else 200.0

  c.dtype = "bfloat16"
  c.log_every_steps = 100
  c.checkpoint_every_steps = 2000

  if a.runlocal:
    common.apply_runlocal(c, image_size=64)
    c.model.embed_dims = (8, 16, 16, 16)
    c.model.block_depths = (1, 1)
    c.spike.time_steps = 2 if stage2 else 1
  return c


def sweep(add):
  """Table V's V2 rows at ImageNet scale: the baseline at T = 1 and T = 4 (1x1, 4x1), and the
  '+ SFA' row (T = 1, D = 4; a different neuron, the same architecture)."""
  add(**{"mode": "vanilla", "spike.time_steps": 1})
  add(**{"mode": "vanilla", "spike.time_steps": 4})
  add(**{"mode": "sfa", "spike.time_steps": 1})
