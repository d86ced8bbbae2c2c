"""Spiking Mask R-CNN on COCO 2017: the official recipe (addendum B.2,
``configs/sdeformer_mask_rcnn/mask-rcnn_sdeformer{,-s}_fpn_1x_coco.py``), the paper's Table II.

    python -m spikejax.main --config=configs/coco_maskrcnn.py:l --workdir=gs://.../coco_l \\
        --config.data_dir=... --config.augment.annotations_dir=.../annotations \\
        --config.init_from=<ImageNet model dir or workdir>
    python -m spikejax.main --config=configs/coco_maskrcnn.py:runlocal --workdir=/tmp/coco

The data: tfds ``coco/2017`` prepared elsewhere (nothing is downloaded here) and the instance
masks from the official ``instances_{train,val}2017.json`` (``augment.annotations_dir``, or
``$COCO_ANNOTATIONS_DIR``). The pipeline (``spikejax.data.det_augment.coco_pipeline``): the
initial Resize to (853, 512) of trap 4 (``--config.augment.initial_resize=False`` drops it),
flip 0.5, DETR's RandomChoice of multi-scale resize (short side 480..800, long <= 1333) or
resize / RandomCrop (384, 600) / resize; test Resize (1333, 800) keep-ratio; 1344 x 1344
canvas, masks at stride 4. The models (``l``, the default, Table II's 38.7M; ``m`` 21.2M;
``v2_15m`` 34.9M and ``v2_55m`` 75.0M, the Meta-SpikeFormer rows, binary LIF at T = 1).
The recipe: AdamW lr 2e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.05 on every tensor (the
official ``custom_keys={'norm': 0}`` matches no parameter name: trap 5), LinearLR from 0.001
over 1000 iterations, x0.1 at epochs 8 and 11, 12 epochs, global batch 8 (2 GPUs x 4), fp32,
evaluation every epoch (COCO bbox and segm; the paper reports box mAP@0.5). The official stride
quirk (trap 1) is the default; ``--config.model.level_strides=true`` corrects it.

Arguments: ``l`` | ``m`` | ``v2_15m`` | ``v2_55m`` (the model), ``runlocal`` (one epoch, one
step of 8, on ``coco_mock``: 8 + 4 synthetic COCO-like images in memory, a 128 px canvas).
"""

import ml_collections

from configs import common

EPOCHS = 12
WARMUP_ITERS = 1_000
TRAIN_IMAGES = 118_287     # COCO 2017 train
MODELS = {"l": "maskrcnn_espikeformer_l", "m": "maskrcnn_espikeformer_m",
          "v2_15m": "maskrcnn_metaspikformer_15m", "v2_55m": "maskrcnn_metaspikformer_55m"}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, size=common.one_of("l", "m", "v2_15m", "v2_55m"), runlocal=False)
  # the dataset's own pipeline (spikejax.data.det_augment.coco_pipeline); keys given here
  # replace its fields
  c = common.trainer_defaults(dataset="coco", eval_split="validation", task="detect",
                              augment=ml_collections.ConfigDict(dict(
                                  annotations_dir=common.placeholder(str))))
  c.batch_size = 8
  c.eval_batch_size = 8
  c.model_name = MODELS[a.size]
  if a.size.startswith("v2"):
    c.mode = "vanilla"
    c.spike.time_steps = 1
  c.spike.rounding = "half_even"                # MultiSpike_norm4: torch.round
  c.detection = ml_collections.ConfigDict(dict(seed=0, train={}, test={}))  # mmdet's defaults
  steps_per_epoch = TRAIN_IMAGES // c.batch_size
  c.num_epochs = float(EPOCHS)
  c.warmup_epochs = WARMUP_ITERS / steps_per_epoch
  c.optimizer = dict(name="adamw", lr=2e-4, weight_decay=0.05, decay_all=True, b1=0.9,
                     b2=0.999, eps=1e-8, grad_clip_norm=0.0, layer_decay=1.0,
                     schedule="warmup_multistep", milestones=(8 / EPOCHS, 11 / EPOCHS),
                     gamma=0.1, warmup_start_factor=1e-3)
  c.min_lr = 0.0
  c.eval_every_epochs = 1
  c.checkpoint_every_steps = 2_000
  c.firing_stats = True
  c.log_every_steps = 50

  if a.runlocal:
    c.dataset = "coco_mock"
    common.apply_runlocal(c, batch_size=8, eval_batch_size=8, max_train_steps=2,
                          max_eval_steps=1, progress_bar=False)
    c.augment = ml_collections.ConfigDict(dict(flip=True))
    c.model.embed_dims = (8, 16, 16, 16)
    c.model.block_depths = (1, 1)
    c.model.fpn_channels = 8
    c.model.fc_channels = 16
    c.detection.train.update(dict(rpn_nms_pre=64, rpn_max_per_img=32, rcnn_num=16))
    c.detection.test.update(dict(rpn_nms_pre=64, rpn_max_per_img=32, max_candidates=64,
                                 max_per_img=10))
  return c


def sweep(add):
  """The four Table II detectors."""
  for name in MODELS.values():
    add(model_name=name, mode="vanilla" if "metaspikformer" in name else "sfa")
