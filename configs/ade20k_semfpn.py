"""Spiking Semantic FPN on ADE20K: the official recipe (addendum B.3,
``configs/EFSDTv2/fpn_sdtv3_512x512_{10M,19M}_ade20k.py``).

    python -m spikejax.main --config=configs/ade20k_semfpn.py:m --workdir=gs://.../ade_m \\
        --config.data_dir=... --config.init_from=<ImageNet model dir or workdir>
    python -m spikejax.main --config=configs/ade20k_semfpn.py:runlocal --workdir=/tmp/ade

The data: tfds ``scene_parse150`` prepared by hand (``tfds build scene_parse150
--manual_dir=...``; nothing is downloaded here), read with mmseg's pipeline: label 0 ignored
and the rest shifted (``reduce_zero_label``), RandomResize (2048, 512) x 0.5-2.0 keeping the
ratio, RandomCrop 512 (cat_max_ratio 0.75), flip, PhotoMetricDistortion, padding 255; eval
resized to (2048, 512) keep-ratio, whole image on a 1024 x 1024 canvas. The model:
``semfpn_espikeformer_m`` (10M backbone, 11,485,462 parameters) or ``_l`` (19M), or the V2
``semfpn_metaspikformer_15m`` baseline (``v2``; T = 1 binary LIF). The recipe: AdamW lr 1e-3,
betas (0.9, 0.999), weight decay 0.005 on every tensor (mmseg decays all), decode head at 2x
lr, LinearLR from 1e-6 over 1500 iterations then poly 1.0 to 0 at 160k iterations, global batch
16, fp32, validation every 2,500 (m) or 8,000 (l) iterations. Start from an ImageNet
checkpoint: ``--config.init_from`` a ``spikejax.convert`` model directory of the official
``.pth`` or a classification workdir; the layer scales stay at 1e-6 (trap 6).

Arguments: ``m`` | ``l`` | ``v2`` (the model), ``runlocal`` (a few steps at 64 px on
``scene_parse150_mock``: 24 + 4 synthetic ADE20K-like examples of varied sizes made in memory).
"""

import ml_collections

from configs import common

ITERATIONS = 160_000
WARMUP_ITERS = 1_500
TRAIN_IMAGES = 20_210      # ADE20K training split


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, size=common.one_of("m", "l", "v2"), runlocal=False)
  # the segmentation pipeline (spikejax.data.seg_augment.SegPipelineConfig): mmseg's
  pipeline = dict(reduce_zero_label=True, train_scale=(2048, 512), ratio_range=(0.5, 2.0),
                  crop_size=512, cat_max_ratio=0.75, flip=True, photometric=True,
                  eval_scale=(2048, 512), eval_size=(1024, 1024))
  c = common.trainer_defaults(dataset="scene_parse150", eval_split="validation",
                              task="segment", augment=ml_collections.ConfigDict(pipeline))
  c.image_size = 512
  c.batch_size = 16
  c.eval_batch_size = 8
  c.model_name = {"m": "semfpn_espikeformer_m", "l": "semfpn_espikeformer_l",
                  "v2": "semfpn_metaspikformer_15m"}[a.size]
  if a.size == "v2":
    c.mode = "vanilla"
  c.spike.rounding = "half_even"
  steps_per_epoch = TRAIN_IMAGES // c.batch_size
  c.num_epochs = ITERATIONS / steps_per_epoch
  c.warmup_epochs = WARMUP_ITERS / steps_per_epoch
  c.optimizer = dict(name="adamw", lr=1e-3, weight_decay=0.005, decay_all=True, b1=0.9,
                     b2=0.999, eps=1e-8, grad_clip_norm=0.0, layer_decay=1.0,
                     schedule="warmup_poly", poly_power=1.0, lr_mult={"decode_head": 2.0})
  c.min_lr = 0.0
  c.eval_every_epochs = 10 ** 6            # evaluations by iteration count instead
  c.eval_every_steps = 8_000 if a.size == "l" else 2_500
  c.checkpoint_every_steps = 2_000
  c.firing_stats = True
  c.log_every_steps = 50

  if a.runlocal:
    c.dataset = "scene_parse150_mock"
    common.apply_runlocal(c, batch_size=8, eval_batch_size=8, max_train_steps=2,
                          max_eval_steps=1, image_size=64)
    c.augment.update(dict(train_scale=(128, 32), crop_size=64, eval_scale=(128, 64),
                          eval_size=(128, 128)))
    c.eval_every_steps = None
    c.eval_every_epochs = 1
    c.model.embed_dims = (8, 16, 16, 16)
    c.model.block_depths = (1, 1)
    c.model.neck_channels = 8
    c.model.head_channels = 8
  return c


def sweep(add):
  """The three Table III models."""
  for name in ("semfpn_espikeformer_m", "semfpn_espikeformer_l"):
    add(model_name=name)
  add(model_name="semfpn_metaspikformer_15m", mode="vanilla")
