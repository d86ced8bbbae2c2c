"""Spiking Mask R-CNN neck and heads (addendum B.1-B.2): counts, shapes, neurons, strides."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spikejax.models import create_model
from spikejax.models.detection import (ConvTranspose2x2, MaskRCNN, MaskRCNNConfig,
                                       SharedSpike2FCBBoxHead, SpikeFCNMaskHead)
from spikejax.models.layers import SpikeConfig

PINNED = {"maskrcnn_espikeformer_l": 38_738_616, "maskrcnn_espikeformer_m": 21_172_240,
          "maskrcnn_metaspikformer_15m": 34_863_320, "maskrcnn_metaspikformer_55m": 75_007_728}
# the official breakdown of the 19M model (B.2)
PARTS_L = {"backbone": 18_626_504, "neck": 2_568_192, "rpn_head": 593_935,
           "bbox_head": 14_306_705, "mask_head": 2_643_280}
TINY = dict(embed_dims=(8, 16, 16, 16), block_depths=(1, 1), num_heads=2, fpn_channels=8,
            fc_channels=16, num_classes=3)


def n_params(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(tree, nnx.Param)))


@pytest.mark.parametrize("name,count", sorted(PINNED.items()))
def test_param_counts_pinned(name, count):
  m = nnx.eval_shape(lambda: create_model(name))
  assert n_params(m) == count
  if name == "maskrcnn_espikeformer_l":
    assert {k: n_params(getattr(m, k)) for k in PARTS_L} == PARTS_L


def images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def test_pyramid_rpn_and_declared_strides():
  m = create_model("maskrcnn_espikeformer_l", **TINY)
  assert isinstance(m, MaskRCNN)
  assert m.strides == (4, 8, 16, 16, 32)
  assert m.declared_strides == (4, 8, 16, 32, 64)          # trap 1, the official quirk
  assert create_model("maskrcnn_espikeformer_l", **TINY,
                      level_strides="true").declared_strides == (4, 8, 16, 16, 32)
  levels, rpn = nnx.jit(lambda m, x: m(x))(m, images((2, 64, 96, 3)))
  assert [lv.shape for lv in levels] == [(2, 16, 24, 8), (2, 8, 12, 8), (2, 4, 6, 8),
                                         (2, 4, 6, 8), (2, 2, 3, 8)]
  # P6 is max_pool2d(kernel 1, stride 2) of P5: every other pixel
  np.testing.assert_array_equal(np.asarray(levels[4]), np.asarray(levels[3][:, ::2, ::2]))
  assert [(c.shape, d.shape) for c, d in rpn] == [((n, h, w, 3), (n, h, w, 12)) for n, h, w, _
                                                  in (lv.shape for lv in levels)]


def test_heads_shapes_and_gradients():
  m = create_model("maskrcnn_metaspikformer_15m", **TINY)
  m.train()
  rois = images((5, 7, 7, 8), 1) * 3
  masks = images((5, 14, 14, 8), 2) * 3
  x = images((1, 32, 32, 3), 3)

  def loss(m):
    cls, reg = m.bbox_head(rois)
    mask = m.mask_head(masks)
    _, rpn = m(x)
    assert cls.shape == (5, 4) and reg.shape == (5, 12) and mask.shape == (5, 28, 28, 3)
    # targets away from 0: the zero-initialised biases get a gradient even where no spike fires
    return (jnp.mean((cls - 1) ** 2) + jnp.mean((reg - 1) ** 2) + jnp.mean((mask - 1) ** 2)
            + sum(jnp.mean((c - 1) ** 2) + jnp.mean((d - 1) ** 2) for c, d in rpn))

  g = nnx.grad(loss)(m)
  for part in ("bbox_head", "mask_head", "rpn_head", "neck"):
    assert sum(float(jnp.sum(v ** 2)) for v in jax.tree.leaves(nnx.state(g[part]))) > 0, part


def test_head_neurons_pass_integers_and_the_fpn_eval_clamp():
  m = create_model("maskrcnn_espikeformer_l", **TINY, fpn_eval_binary=True)
  u = jnp.asarray([[-1.0, 0.4, 0.6, 1.5, 2.5, 3.6, 9.0]])
  want = [[0, 0, 1, 2, 2, 4, 4]]          # Norm 1, half-to-even, ceiling 4 (trap 3)
  np.testing.assert_array_equal(np.asarray(m.rpn_head.conv_spike(u)), want)
  np.testing.assert_array_equal(np.asarray(m.neck._spike(m.neck.fpn_spikes[0], u)), want)
  m.eval()     # the registered official FPN neuron clamps to [0, 1] in eval mode only (trap 2)
  np.testing.assert_array_equal(np.asarray(m.neck._spike(m.neck.fpn_spikes[0], u)),
                                [[0, 0, 1, 1, 1, 1, 1]])
  np.testing.assert_array_equal(np.asarray(m.rpn_head.conv_spike(u)), want)
  d = create_model("maskrcnn_espikeformer_l", **TINY)
  d.eval()     # the default clamps to 4 in both modes
  np.testing.assert_array_equal(np.asarray(d.neck._spike(d.neck.fpn_spikes[0], u)), want)


def test_conv_transpose_is_pytorchs_2x2_stride_2():
  layer = ConvTranspose2x2(3, 4, rngs=nnx.Rngs(0))
  x = np.asarray(images((2, 3, 5, 3), 4))
  w, b = np.asarray(layer.kernel[...]), np.asarray(layer.bias[...])
  ref = np.zeros((2, 6, 10, 4), np.float32)
  for i in range(3):
    for j in range(5):
      for a in range(2):
        for c in range(2):
          ref[:, 2 * i + a, 2 * j + c] = x[:, i, j] @ w[a, c] + b
  np.testing.assert_allclose(np.asarray(layer(jnp.asarray(x))), ref, rtol=1e-5, atol=1e-6)
  assert float(jnp.max(jnp.abs(layer.kernel[...]))) <= 1 / np.sqrt(4 * 4)


def test_box_head_flattens_in_pytorch_order():
  spike = SpikeConfig()
  head = SharedSpike2FCBBoxHead(2, 3, 4, 1, spike, rngs=nnx.Rngs(0))
  rois = jnp.arange(2 * 3 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 3, 2) % 5
  flat = np.transpose(np.asarray(rois), (0, 3, 1, 2)).reshape(2, -1)
  h = np.round(np.clip(flat, 0, 4)) @ np.asarray(head.shared_fc1.kernel[...]) + np.asarray(
      head.shared_fc1.bias[...])
  h = np.round(np.clip(h, 0, 4)) @ np.asarray(head.shared_fc2.kernel[...]) + np.asarray(
      head.shared_fc2.bias[...])
  cls = h @ np.asarray(head.fc_cls.kernel[...]) + np.asarray(head.fc_cls.bias[...])
  np.testing.assert_allclose(np.asarray(head(rois)[0]), cls, rtol=1e-5, atol=1e-5)
  assert SpikeFCNMaskHead(2, 0, 1, spike, rngs=nnx.Rngs(0))(rois).shape == (2, 6, 6, 1)


def test_bad_options():
  with pytest.raises(ValueError, match="level_strides must be 'official'"):
    MaskRCNNConfig(level_strides="tru")
  with pytest.raises(ValueError, match="num_outs must be >= 4"):
    MaskRCNNConfig(num_outs=3)
  with pytest.raises(TypeError, match="unknown option 'bogus' for a Mask R-CNN"):
    create_model("maskrcnn_espikeformer_l", bogus=1)
