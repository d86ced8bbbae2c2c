"""Detection and instance segmentation of Fashion-MNIST scenes: a scaled-down spiking Mask R-CNN
(addendum B.2) trained from scratch inside 45 minutes on a 2-core CPU.

    python -m spikejax.main --config=configs/det_fashion_mnist_scenes.py --workdir=workdirs/det
    python -m spikejax.main --config=configs/det_fashion_mnist_scenes.py:runlocal --workdir=/tmp/d

The data: ``fashion_mnist_scenes_det`` (the 96 x 96 canvases of ``fashion_mnist_scenes``: 1-4
garments, scale 0.8-2.0, later ones occluding earlier ones; 10 classes; boxes and visible-pixel
instance masks), built on first use from the local Fashion-MNIST files, horizontal flips in
training. The model: the official detector (E-SpikeFormer backbone with taps s4/s8/s16a/s16b,
SpikeFPN with Norm-1 SFA neurons, spiking RPN, ``SharedSpike2FCBBoxHead`` and
``SpikeFCNMaskHead``; the official stride quirk, trap 1) at widths (32, 64, 128, 192), 2 + 1
transformer blocks, a 32-channel FPN, 256-wide box FCs and a 2-conv mask head. Training keeps
mmdet's assigners, samplers and losses at smaller counts (300 / 100 RPN proposals, 64 sampled
RoIs per image, the mask head on 8 of their positives); inference: 300 / 100 proposals, score
0.05, NMS 0.5, 20 detections per image (a scene has at most 4 garments). The recipe: AdamW
(wd 0.05 on every tensor, trap 5) at lr 1e-3 from scratch, linear warm-up then mmdet's x0.1
steps at 8/12 and 11/12 of the run, batch 16, its length planned from the measured step rate
so that the whole command ends inside 44 minutes (``spikejax/train/budget.py``). Box and mask
AP on the 10,000 test scenes (COCO evaluation, pycocotools); measured curves:
docs/detection.md.

Arguments (``:a,b``): ``runlocal`` (a few steps on the 256 + 64-scene ``tiny`` set), ``v2``
(the Meta-SpikeFormer V2 backbone, binary LIF at T = 1). Any other argument is an error.
"""

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = common.parse_arg(arg, runlocal=False, v2=False)
  c = common.trainer_defaults(dataset="fashion_mnist_scenes_det", channels=1, task="detect",
                              augment=ml_collections.ConfigDict(dict(flip=True)))
  c.image_size = 96
  c.batch_size = 16
  c.eval_batch_size = 200       # divides 1, 2, 4 and 8 devices

  c.model_name = "maskrcnn_metaspikformer_15m" if a.v2 else "maskrcnn_espikeformer_m"
  c.model.embed_dims = (32, 64, 128, 192)
  c.model.block_depths = (2, 1)                 # official: 6, 2
  c.model.fpn_channels = 32                     # official: 256 (10M config: 192)
  c.model.fc_channels = 256                     # official: 1024 (768)
  c.model.mask_convs = 2                        # official: 4
  if a.v2:
    c.mode = "vanilla"                          # binary LIF (tau 2, hard reset), T = 1
    c.spike.time_steps = 1
  c.spike.rounding = "half_even"                # MultiSpike_norm: torch.round

  # mmdet's train_cfg / test_cfg (spikejax.models.maskrcnn), scaled to 96 px scenes
  c.detection = ml_collections.ConfigDict(dict(
      seed=0,
      # mask targets from 96 px masks: a RoI inside the image needs at most ceil(96 / 28) = 4
      # samples per bin and axis (exact); the mask head trains on 8 of the 16 positive slots
      train=dict(rpn_nms_pre=300, rpn_max_per_img=100, rcnn_num=64, mask_max_grid=4,
                 mask_rois=8),
      test=dict(rpn_nms_pre=300, rpn_max_per_img=100, max_candidates=300, max_per_img=20)))

  c.optimizer = dict(name="adamw", lr=1e-3, weight_decay=0.05, decay_all=True, b1=0.9,
                     b2=0.999, eps=1e-8, grad_clip_norm=0.0, layer_decay=1.0,
                     schedule="warmup_multistep", milestones=(8 / 12, 11 / 12), gamma=0.1,
                     warmup_start_factor=1e-3)
  c.min_lr = 0.0
  c.warmup_epochs = 0.08                        # 300 steps
  c.time_budget_minutes = 44.0
  c.num_epochs = 1.0
  # one evaluation, at the end: one of the 10,000 test scenes took 260 s here (the budget
  # counts it), three of them cost a quarter of the training time (docs/detection.md)
  c.eval_every_epochs = 10 ** 6
  c.eval_every_steps = None
  c.firing_stats = False                        # measured after the run (docs/detection.md)
  c.checkpoint_every_steps = 500

  if a.runlocal:
    c.dataset = "fashion_mnist_scenes_det_tiny"
    common.apply_runlocal(c, batch_size=8, eval_batch_size=32, max_train_steps=3,
                          max_eval_steps=1, time_budget_minutes=None, progress_bar=False)
    c.eval_every_steps = None
    c.eval_every_epochs = 1
    c.model.embed_dims = (8, 16, 16, 16)
    c.model.block_depths = (1, 1)
    c.model.fpn_channels = 8
    c.model.fc_channels = 16
    c.detection.train.update(dict(rpn_nms_pre=64, rpn_max_per_img=32, rcnn_num=16))
    c.detection.test.update(dict(rpn_nms_pre=64, rpn_max_per_img=32, max_candidates=64,
                                 max_per_img=10))
  return c


def sweep(add):
  """The E-SpikeFormer and the Meta-SpikeFormer (V2) backbones (``python -m launch.sweep``)."""
  add(model_name="maskrcnn_espikeformer_m")
  add(model_name="maskrcnn_metaspikformer_15m", mode="vanilla")
