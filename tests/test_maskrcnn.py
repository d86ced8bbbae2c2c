"""The two stages of the spiking Mask R-CNN (addendum B.2): targets, losses, gradients and the
fixed-size inference, under ``jax.jit``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spikejax.models import boxes as B
from spikejax.models import create_model
from spikejax.models import maskrcnn as MR

TINY = dict(embed_dims=(8, 16, 16, 16), block_depths=(1, 1), num_heads=2, fpn_channels=8,
            fc_channels=16, num_classes=3)
SMALL_TRAIN = MR.MaskRCNNTrainConfig(rpn_nms_pre=200, rpn_max_per_img=64, rcnn_num=32)
SMALL_TEST = MR.MaskRCNNTestConfig(rpn_nms_pre=200, rpn_max_per_img=64, max_candidates=128,
                                   max_per_img=20)
H = 64


def scene_batch():
  """Two 64 x 64 images: two boxes in the first, one in the second (rectangle masks)."""
  gt = np.zeros((2, 4, 4), np.float32)
  gt[:, 0] = [4, 6, 30, 40]
  gt[0, 1] = [30, 20, 60, 50]
  valid = np.array([[1, 1, 0, 0], [1, 0, 0, 0]], bool)
  masks = np.zeros((2, 4, H, H), np.uint8)
  for b in range(2):
    for k in range(4):
      if valid[b, k]:
        x1, y1, x2, y2 = gt[b, k].astype(int)
        masks[b, k, y1:y2, x1:x2] = 1
  rng = np.random.default_rng(0)
  return dict(image=jnp.asarray(rng.normal(size=(2, H, H, 3)), jnp.float32),
              image_hw=jnp.asarray([[H, H], [H, 48]], jnp.int32), gt_boxes=jnp.asarray(gt),
              gt_classes=jnp.asarray([[0, 2, -1, -1], [1, -1, -1, -1]], jnp.int32),
              gt_valid=jnp.asarray(valid), gt_masks=jnp.asarray(masks))


@pytest.fixture(scope="module")
def model():
  return create_model("maskrcnn_espikeformer_l", rngs=nnx.Rngs(0), **TINY)


def test_anchor_valid_flags_follow_the_padded_image():
  ok = MR.anchor_valid([(4, 6)], [16], 3, jnp.asarray([40, 64]))
  # 40 px padded to 64: ceil(64 / 16) = 4 rows; 64 px: 4 of 6 columns
  want = np.repeat(((np.arange(4)[:, None] < 4) & (np.arange(6)[None, :] < 4)).reshape(-1), 3)
  np.testing.assert_array_equal(np.asarray(ok), want)


def test_rcnn_targets_add_the_ground_truth_as_proposals():
  gt = jnp.asarray([[10.0, 10, 30, 30], [0, 0, 0, 0]])
  props = jnp.asarray([[50.0, 50, 60, 60], [11, 11, 30, 30]])   # a negative, a positive
  cfg = MR.MaskRCNNTrainConfig(rcnn_num=4, rcnn_pos_fraction=0.5)
  rois, labels, g, pos, ok, target = MR._rcnn_targets(
      props, jnp.asarray([True, True]), gt, jnp.asarray([2, -1]), jnp.asarray([True, False]),
      jax.random.key(0), 3, cfg)
  # priors: gt 0 (IoU 1), the padded gt (invalid), the negative, the positive (IoU 0.9025)
  assert int(jnp.sum(pos)) == 2 and int(jnp.sum(ok)) == 3
  np.testing.assert_array_equal(np.asarray(labels)[np.asarray(pos)], [2, 2])
  assert int(np.asarray(labels)[np.asarray(ok & ~pos)][0]) == 3          # background = K
  i_gt = int(np.flatnonzero(np.all(np.asarray(rois) == [10, 10, 30, 30], axis=1)
                            & np.asarray(pos))[0])
  np.testing.assert_allclose(np.asarray(target)[i_gt], 0.0, atol=1e-6)    # gt onto itself
  np.testing.assert_allclose(
      np.asarray(B.decode(rois, target, stds=MR.RCNN_STDS))[np.asarray(pos)],
      [[10, 10, 30, 30]] * 2, atol=1e-4)


def test_mask_targets_crop_and_resize():
  m = np.zeros((1, 64, 64), np.uint8)
  m[0, 16:48, 16:32] = 1          # left half of the RoI below
  t = MR._mask_targets(jnp.asarray(m), jnp.asarray([[16.0, 16, 48, 48]]), jnp.asarray([0]),
                       28, 1, 8)
  want = np.zeros((28, 28))
  want[:, :14] = 1
  np.testing.assert_array_equal(np.asarray(t[0]), want)
  # the same mask stored at stride 2
  t2 = MR._mask_targets(jnp.asarray(m[:, ::2, ::2]), jnp.asarray([[16.0, 16, 48, 48]]),
                        jnp.asarray([0]), 28, 2, 8)
  np.testing.assert_array_equal(np.asarray(t2[0]), want)


def test_detect_one_scores_nms_per_class_and_padding():
  props = jnp.asarray([[10.0, 10, 30, 30], [11, 11, 31, 31], [10, 10, 30, 30], [0, 0, 5, 5]])
  ok = jnp.asarray([True, True, True, False])
  # logits over (3 classes + background): proposals 0, 1 class 0; proposal 2 class 1
  lg = jnp.log(jnp.asarray([[0.9, 0.02, 0.02, 0.06], [0.8, 0.02, 0.02, 0.16],
                            [0.02, 0.7, 0.02, 0.26], [0.97, 0.01, 0.01, 0.01]]))
  deltas = jnp.zeros((4, 3, 4))
  cfg = MR.MaskRCNNTestConfig(max_per_img=5, max_candidates=12)
  boxes, scores, classes, valid = MR._detect_one(props, ok, lg, deltas, jnp.asarray([64.0, 64]),
                                                 cfg)
  # proposal 1 (IoU 0.82 with 0, same class) is suppressed; proposal 2 is another class; the
  # padded proposal 3 and every score <= 0.05 are not candidates
  assert np.asarray(valid).tolist() == [True, True, False, False, False]
  np.testing.assert_allclose(np.asarray(scores)[:2], [0.9, 0.7], rtol=1e-5)
  assert np.asarray(classes).tolist() == [0, 1, -1, -1, -1]
  np.testing.assert_allclose(np.asarray(boxes)[:2], [[10, 10, 30, 30]] * 2)
  # a lower NMS threshold than their IoU keeps both class-0 boxes
  cfg2 = MR.MaskRCNNTestConfig(max_per_img=5, max_candidates=12, nms_iou=0.9)
  *_, valid2 = MR._detect_one(props, ok, lg, deltas, jnp.asarray([64.0, 64]), cfg2)
  assert int(jnp.sum(valid2)) == 3


def test_losses_are_finite_and_reach_every_head(model):
  batch = scene_batch()
  model.train()

  @nnx.jit
  def grads(m, batch, key):
    return nnx.value_and_grad(lambda m: MR.losses(m, batch, key, SMALL_TRAIN), has_aux=True)(m)

  (loss, aux), g = grads(model, batch, jax.random.key(0))
  assert np.isfinite(float(loss))
  for k in ("rpn_cls", "rcnn_cls", "mask", "rcnn_box"):
    assert float(aux[k]) > 0, (k, aux)
  # RPN: 256 sampled per image unless fewer anchors; positives exist for every valid gt
  assert float(aux["rpn_positives"]) >= 1
  assert float(aux["positives"]) >= 1.5       # gt boxes join the proposals as positives
  np.testing.assert_allclose(float(loss), sum(float(aux[k]) for k in (
      "rpn_cls", "rpn_box", "rcnn_cls", "rcnn_box", "mask")), rtol=1e-5)
  for part in ("backbone", "neck", "rpn_head", "bbox_head", "mask_head"):
    assert sum(float(jnp.sum(v ** 2)) for v in jax.tree.leaves(nnx.state(g[part]))) > 0, part


def test_predict_fixed_size_under_jit(model):
  batch = scene_batch()
  model.eval()
  try:
    out = nnx.jit(lambda m, x, hw: MR.predict(m, x, hw, SMALL_TEST))(
        model, batch["image"], batch["image_hw"])
  finally:
    model.train()
  d = SMALL_TEST.max_per_img
  assert out["boxes"].shape == (2, d, 4) and out["mask_probs"].shape == (2, d, 28, 28)
  v = np.asarray(out["valid"])
  assert v.any()
  s, c, b = (np.asarray(out[k]) for k in ("scores", "classes", "boxes"))
  assert np.all(s[v] > SMALL_TEST.score_thr) and np.all((c[v] >= 0) & (c[v] < 3))
  assert np.all(c[~v] == -1) and np.all(s[~v] == 0)
  assert np.all(np.diff(s[0][v[0]]) <= 0)                  # best first
  # boxes inside each image's own extent (the second image is 48 px wide)
  assert b[1][v[1]][:, [0, 2]].max() <= 48 and b[0][v[0]].max() <= H
  p = np.asarray(out["mask_probs"])
  assert np.all((p >= 0) & (p <= 1)) and np.all(p[~v] == 0)


def test_mask_rois_trains_the_mask_head_on_the_first_positive_slots(model):
  import dataclasses
  batch = scene_batch()
  model.train()
  run = nnx.jit(lambda m, b, k, cfg: MR.losses(m, b, k, cfg)[1], static_argnums=3)
  key = jax.random.key(0)
  every = run(model, batch, key, SMALL_TRAIN)
  n_pos = int(SMALL_TRAIN.rcnn_num * SMALL_TRAIN.rcnn_pos_fraction)
  same = run(model, batch, key, dataclasses.replace(SMALL_TRAIN, mask_rois=n_pos + 3))
  one = run(model, batch, key, dataclasses.replace(SMALL_TRAIN, mask_rois=1))
  for k in every:
    np.testing.assert_allclose(float(same[k]), float(every[k]), rtol=1e-6, err_msg=k)
    if k != "mask":      # the box and RPN parts do not depend on the mask head's RoIs
      np.testing.assert_allclose(float(one[k]), float(every[k]), rtol=1e-6, err_msg=k)
  assert float(one["mask"]) != float(every["mask"])
  with pytest.raises(ValueError, match="mask_rois"):
    MR.MaskRCNNTrainConfig(mask_rois=0)
