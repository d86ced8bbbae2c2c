"""Semantic segmentation (addendum B.3, C.1, C.3): backbone taps, QFPN + QFPNHead, the registered
models' parameter counts, the task's loss and metrics, backbone initialisation by name."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from spikejax.models import count_params, create_model
from spikejax.models.espikeformer import FEATURE_TAPS
from spikejax.models.segmentation import QFPNHead, resize_bilinear, resize_nearest
from spikejax.train import checkpoints as ckpt_lib
from spikejax.train import optim
from spikejax.train.tasks import get_task, segment

# The official totals (addendum B.3): backbone + QFPN + QFPNHead, 150 classes.
PINNED = {
    "semfpn_espikeformer_m": (11_485_462, 9_787_008, 645_120, 1_053_334),
    "semfpn_espikeformer_l": (20_354_254, 18_633_272, 667_648, 1_053_334),
    "semfpn_metaspikformer_15m": (16_472_190, 14_751_208, 667_648, 1_053_334),
}
TINY = dict(num_classes=5, embed_dims=(8, 16, 16, 16), block_depths=(1, 1), neck_channels=8,
            head_channels=8, in_channels=1)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_param_counts_pinned(name):
  model = nnx.eval_shape(lambda: create_model(name))
  total, backbone, neck, head = PINNED[name]
  assert (count_params(model), count_params(model.backbone), count_params(model.neck),
          count_params(model.decode_head)) == (total, backbone, neck, head)


def test_layer_scales_of_the_seg_backbone():
  """Three per-channel layer scales per transformer block at 1e-6 (trap 6): 4,896 values in
  the 10M backbone (8 blocks: 6 x 192 x 3 + 2 x 240 x 3)."""
  model = nnx.eval_shape(lambda: create_model("semfpn_espikeformer_m"))
  scales = [v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
            if str(p[-1]).startswith("layer_scale")]
  assert sum(int(np.prod(v.get_value().shape)) for v in scales) == 4_896
  real = create_model("semfpn_espikeformer_m", **{k: v for k, v in TINY.items()
                                                    if k != "block_depths"})
  blk = real.backbone.block3[0]
  for k in (1, 2, 3):
    np.testing.assert_array_equal(getattr(blk, f"layer_scale{k}")[...], np.float32(1e-6))


@pytest.mark.parametrize("family", ["semfpn_espikeformer_m", "semfpn_metaspikformer_15m"])
def test_taps_strides_and_channels(family):
  """C.1: s2/s4/s8/s16a/s16b after ConvBlock1_1 / ConvBlock1_2 / ConvBlock2_2 / block3 /
  block4 with the official strides; the output is per-pixel logits at the input size."""
  model = create_model(family, **TINY)
  x = jax.random.normal(jax.random.key(0), (2, 64, 48, 1))
  feats = model.backbone.features(x)
  assert list(feats) == list(FEATURE_TAPS)
  shapes = {k: v.shape for k, v in feats.items()}
  assert shapes == {"s2": (2, 32, 24, 4), "s4": (2, 16, 12, 8), "s8": (2, 8, 6, 16),
                    "s16a": (2, 4, 3, 16), "s16b": (2, 4, 3, 16)}
  stages = model.backbone.stage_features(x)
  for tap, (stage, _) in FEATURE_TAPS.items():
    np.testing.assert_array_equal(feats[tap], stages[stage])
  assert model.decode(x).shape == (2, 32, 24, 5)
  assert model(x).shape == (2, 64, 48, 5)
  with pytest.raises(TypeError, match="num_classes=0"):
    model.backbone(x)
  with pytest.raises(ValueError, match="unknown feature tap"):
    model.backbone.features(x, ("s32",))


LARGE_TINY = dict(num_classes=5, embed_dims=(16, 32, 64), depth=2, neck_channels=8,
                  head_channels=8, in_channels=1)


def test_large_family_taps_and_semfpn():
  """The LARGE encoder's taps (s2/s4/s8 after ConvBlock1_1 / 1_2 / 2_2, s16 = block3's tokens
  on their grid), equal to its stage outputs; only the conv stages run without s16; its
  Semantic FPN takes (s2, s4, s8, s16) and gives per-pixel logits; a LARGE classifier needs
  classes."""
  from spikejax.models.spikformer import FEATURE_TAPS as LARGE_TAPS
  model = create_model("semfpn_spikformer12_512", **LARGE_TINY)
  x = jax.random.normal(jax.random.key(1), (2, 64, 48, 1))
  bb = model.backbone
  feats = bb.features(x)
  assert {k: v.shape for k, v in feats.items()} == {
      "s2": (2, 32, 24, 8), "s4": (2, 16, 12, 16), "s8": (2, 8, 6, 32), "s16": (2, 4, 3, 64)}
  stages = bb.stage_features(x)
  for tap, (stage, _, _) in LARGE_TAPS.items():
    np.testing.assert_array_equal(feats[tap].reshape(stages[stage].shape), stages[stage])
  conv_only = bb.features(x, ("s2", "s8"))
  assert list(conv_only) == ["s2", "s8"]
  np.testing.assert_array_equal(conv_only["s8"], feats["s8"])
  assert bb.tap_info(("s2", "s16")) == {"s2": (2, 8), "s16": (16, 64)}
  assert model.taps == ("s2", "s4", "s8", "s16") and model.strides == (2, 4, 8, 16)
  assert model(x).shape == (2, 64, 48, 5)
  with pytest.raises(ValueError, match="unknown feature tap.*LARGE"):
    bb.features(x, ("s16b",))
  with pytest.raises(ValueError, match="num_classes >= 1"):
    create_model("spikformer12_512", num_classes=0)


def test_large_semfpn_param_count_and_init_from_a_large_classifier():
  """The LARGE Semantic FPN (no official model): its backbone is the 83M finetuning model less
  its two heads; a LARGE classifier's values load into ``backbone/`` by name."""
  full = nnx.eval_shape(lambda: create_model("semfpn_spikformer12_512"))
  cls_full = nnx.eval_shape(lambda: create_model("spikformer12_512"))
  heads = count_params(cls_full.head) + count_params(cls_full.head_kd)
  assert count_params(full.backbone) == count_params(cls_full) - heads == 81_989_952
  assert count_params(full) == 83_759_062
  cls = create_model("spikformer12_512", num_classes=10, embed_dims=(16, 32, 64), depth=2,
                     in_channels=1, rngs=nnx.Rngs(3))
  values = {"/".join(str(p) for p in k): v.get_value()
            for k, v in nnx.to_flat_state(nnx.state(cls, nnx.Any(nnx.Param, nnx.BatchStat)))}
  seg = create_model("semfpn_spikformer12_512", **LARGE_TINY)
  report = ckpt_lib.transfer_weights(values, seg)
  assert {k.split("/")[1] for k in report["dropped"]} == {"head", "head_kd"}
  assert all(k.startswith(("neck/", "decode_head/")) for k in report["fresh"])
  np.testing.assert_array_equal(seg.backbone.block3[1].attn.q_conv.conv.conv1.conv.kernel[...],
                                cls.block3[1].attn.q_conv.conv.conv1.conv.kernel[...])


def test_decode_head_structure_and_init():
  """B.3: 1 + 1 + 2 + 3 units, x2 bilinear after every unit of a coarser level, Xavier-uniform
  convs with zero bias, conv_seg normal(0.01)."""
  model = create_model("semfpn_espikeformer_m", num_classes=150)
  head = model.decode_head
  assert [len(s) for s in head.scale_heads] == [1, 1, 2, 3]
  assert head.upsample == (False, True, True, True)
  unit = head.scale_heads[3][1]
  assert unit.conv.bias is None
  k = np.asarray(unit.conv.kernel[...])
  bound = np.sqrt(6.0 / (128 * 9 + 128 * 9))
  assert np.abs(k).max() <= bound and np.abs(k).max() > 0.9 * bound
  lateral = model.neck.lateral_convs[3].conv
  np.testing.assert_array_equal(lateral.bias[...], 0.0)
  seg = np.asarray(head.conv_seg.kernel[...])
  assert 0.009 < seg.std() < 0.011
  np.testing.assert_array_equal(head.conv_seg.bias[...], 0.0)
  with pytest.raises(ValueError, match="powers of two"):
    QFPNHead(4, 4, 3, (2, 6), model.head_spike_config, rngs=nnx.Rngs(0))


def _torch_bilinear(x, out_h, out_w):
  """PyTorch ``interpolate(mode='bilinear', align_corners=False)`` in numpy (NHWC)."""
  n, h, w, c = x.shape

  def coords(out, size):
    src = (np.arange(out) + 0.5) * size / out - 0.5
    src = np.maximum(src, 0.0)
    lo = np.minimum(np.floor(src).astype(int), size - 1)
    hi = np.minimum(lo + 1, size - 1)
    return lo, hi, src - lo

  y0, y1, fy = coords(out_h, h)
  x0, x1, fx = coords(out_w, w)
  top = x[:, y0][:, :, x0] * (1 - fx)[None, None, :, None] + x[:, y0][:, :, x1] * fx[None, None, :, None]
  bot = x[:, y1][:, :, x0] * (1 - fx)[None, None, :, None] + x[:, y1][:, :, x1] * fx[None, None, :, None]
  return top * (1 - fy)[None, :, None, None] + bot * fy[None, :, None, None]


def test_resizes_have_pytorch_semantics():
  x = np.random.default_rng(0).normal(size=(2, 5, 7, 3)).astype(np.float32)
  for size in [(10, 14), (20, 28), (13, 9)]:
    np.testing.assert_allclose(resize_bilinear(jnp.asarray(x), size), _torch_bilinear(x, *size),
                               rtol=1e-5, atol=1e-5)
  # nearest: src = floor(dst * in / out)
  near = np.asarray(resize_nearest(jnp.asarray(x), (10, 9)))
  rows = (np.arange(10) * 5) // 10
  cols = (np.arange(9) * 7) // 9
  np.testing.assert_array_equal(near, x[:, rows][:, :, cols])


def test_pixel_loss_ignores_255_with_both_divisors():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(2, 4, 4, 3)), jnp.float32)
  labels = rng.integers(0, 3, (2, 4, 4))
  labels[0, :2] = 255
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(np.where(
      labels == 255, 0, labels)))
  keep = labels != 255
  total = float(jnp.sum(jnp.where(keep, ce, 0.0)))
  loss, valid = segment.pixel_loss(logits, jnp.asarray(labels))
  assert np.isclose(float(loss), total / labels.size)          # mmseg: avg_non_ignore=False
  loss2, _ = segment.pixel_loss(logits, jnp.asarray(labels), avg_non_ignore=True)
  assert np.isclose(float(loss2), total / keep.sum())
  np.testing.assert_array_equal(valid, keep)


def test_confusion_matrix_and_metrics():
  rng = np.random.default_rng(2)
  labels = rng.integers(0, 4, (3, 6, 6))
  labels[1, 0] = 255
  pred = rng.integers(0, 4, (3, 6, 6))
  weights = np.array([1.0, 1.0, 0.0])[:, None, None]        # the third example is padding
  conf = np.asarray(segment.confusion_matrix(jnp.asarray(pred), jnp.asarray(labels),
                                             jnp.asarray(weights), 4))
  ref = np.zeros((4, 4))
  for b in range(2):
    for lab, p in zip(labels[b].ravel(), pred[b].ravel()):
      if lab != 255:
        ref[lab, p] += 1
  np.testing.assert_array_equal(conf, ref)
  m = segment.segmentation_metrics(ref)
  iou = [ref[k, k] / (ref[k].sum() + ref[:, k].sum() - ref[k, k]) for k in range(4)]
  assert np.allclose(m["per_class_iou"], iou) and np.isclose(m["miou"], np.mean(iou))
  assert np.isclose(m["pixel_accuracy"], np.trace(ref) / ref.sum())
  # a class in neither labels nor predictions is left out of the mean (mmseg nanmean)
  m = segment.segmentation_metrics(np.diag([3.0, 0.0, 1.0]))
  assert m["per_class_iou"] == [1.0, None, 1.0] and m["miou"] == 1.0


def test_train_step_learns_a_fixed_batch():
  model = create_model("semfpn_espikeformer_m", **TINY)
  opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  graphdef, state = nnx.split((model, opt))
  rng = np.random.default_rng(3)
  x = rng.normal(size=(4, 32, 32, 1)).astype(np.float32)
  y = np.where(x[..., 0] > 0, 1, 2).astype(np.int32)
  y[:, :4] = 255
  batch = {"image": jnp.asarray(x), "label": jnp.asarray(y)}
  losses = []
  for _ in range(30):
    state, met = segment.jitted_train_step(graphdef, state, batch, jnp.asarray(False))
    losses.append(float(met["loss"]))
  assert losses[-1] < 0.7 * losses[0], losses
  assert get_task("segment").families == ("semfpn",)


def test_backbone_initialised_from_a_classification_model():
  """A classification model's values load into ``backbone/`` by name: its classifier is
  dropped, the neck, the head and the layer scales stay fresh (trap 6: strict=False)."""
  cls = create_model("espikeformer_m", num_classes=10, embed_dims=(8, 16, 16, 16),
                     block_depths=(1, 1), in_channels=1, rngs=nnx.Rngs(7))
  values = {"/".join(str(p) for p in k): v.get_value()
            for k, v in nnx.to_flat_state(nnx.state(cls, nnx.Any(nnx.Param, nnx.BatchStat)))}
  seg = create_model("semfpn_espikeformer_m", **TINY)
  report = ckpt_lib.transfer_weights(values, seg)
  assert set(report["dropped"]) == {"backbone/head/kernel", "backbone/head/bias"}
  assert all(k.startswith(("neck/", "decode_head/")) or "layer_scale" in k
             for k in report["fresh"])
  assert any("layer_scale" in k for k in report["fresh"])
  np.testing.assert_array_equal(seg.backbone.block3[0].attn.q_conv.conv.kernel[...],
                                cls.block3[0].attn.q_conv.conv.kernel[...])
  np.testing.assert_array_equal(seg.backbone.block3[0].layer_scale1[...], np.float32(1e-6))


def test_poly_schedule_and_head_lr_mult():
  s = optim.warmup_poly_schedule(1e-3, total_steps=100, warmup_steps=10, power=1.0)
  assert np.isclose(float(s(0)), 1e-9) and np.isclose(float(s(10)), 1e-3)
  assert np.isclose(float(s(55)), 0.5e-3) and float(s(100)) == 0.0 and float(s(150)) == 0.0
  model = create_model("semfpn_espikeformer_m", **TINY)
  scales = optim.lr_mult_scales(nnx.state(model, nnx.Param), {"decode_head": 2.0})
  flat = {"/".join(str(k) for k in p): v for p, v in
          jax.tree_util.tree_flatten_with_path(scales)[0]}
  assert all(v == (2.0 if "decode_head" in k else 1.0) for k, v in flat.items())
  assert any(v == 2.0 for v in flat.values()) and any(v == 1.0 for v in flat.values())
