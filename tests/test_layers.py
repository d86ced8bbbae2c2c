"""Hand-written gradients and fast paths in ``spikejax.models.layers`` against plain JAX."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from spikejax.models import layers


def _reference_bn(x, scale, bias, eps):
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axis=axes)
  var = jnp.mean(jnp.square(x - mean), axis=axes)
  return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias, mean, var


def test_batch_norm_custom_backward_equals_autodiff():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(1.5, 2.0, (3, 5, 4, 6)), jnp.float32)
  scale = jnp.asarray(rng.normal(size=6), jnp.float32)
  bias = jnp.asarray(rng.normal(size=6), jnp.float32)
  # Cotangents on all three outputs (mean and var too), so every term of the backward counts.
  cts = (jnp.asarray(rng.normal(size=x.shape), jnp.float32),
         jnp.asarray(rng.normal(size=6), jnp.float32), jnp.asarray(rng.normal(size=6), jnp.float32))
  out, vjp = jax.vjp(lambda *a: layers._batch_norm_train(*a, 1e-5), x, scale, bias)
  ref, ref_vjp = jax.vjp(lambda *a: _reference_bn(*a, 1e-5), x, scale, bias)
  for a, b in zip(out, ref):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  for a, b in zip(vjp(cts), ref_vjp(cts)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_batch_norm_module_training_and_eval():
  bn = layers.BatchNorm(4)
  bn.scale[...] = jnp.array([1.0, 2.0, 0.5, -1.0])
  x = jnp.asarray(np.random.default_rng(1).normal(3.0, 2.0, (8, 3, 3, 4)), jnp.float32)
  y = bn(x)
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  np.testing.assert_allclose(y, (x - mean) / jnp.sqrt(var + 1e-5) * bn.scale[...], atol=1e-5)
  n = 8 * 9
  np.testing.assert_allclose(bn.mean[...], 0.1 * mean, rtol=1e-6)
  np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * var * n / (n - 1), rtol=1e-6)
  bn.use_running_average = True
  np.testing.assert_allclose(
      bn(x), (x - bn.mean[...]) / jnp.sqrt(bn.var[...] + 1e-5) * bn.scale[...], atol=1e-5)


def _dn(x, w):
  return jax.lax.conv_dimension_numbers(x.shape, w.shape, ("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize("k,pad", [(3, 1), (7, 3), (3, 0), (5, 1)])
def test_depthwise_fast_path_value_and_grads(k, pad):
  rng = np.random.default_rng(k)
  x = jnp.asarray(rng.normal(size=(2, 9, 8, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 1, 5)), jnp.float32)
  padding = ((pad, pad), (pad, pad))

  def run(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w, (1, 1), padding, dimension_numbers=_dn(x, w),
                                             feature_group_count=5)))

  fast, ref = run(layers.depthwise_conv_general_dilated), run(jax.lax.conv_general_dilated)
  np.testing.assert_allclose(fast(x, w), ref(x, w), rtol=1e-5)
  for a, b in zip(jax.grad(fast, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,kernel,stride,pad", [
    ((2, 8, 8, 8), (3, 3, 8, 16), 1, 1),      # channel-expanding 3x3: im2col
    ((2, 4, 4, 8), (3, 3, 8, 8), 2, 1),       # 2x2 output pixels: im2col
    ((2, 20, 20, 8), (3, 3, 8, 4), 1, 1),     # XLA's conv
])
def test_dense_conv_fast_path_value_and_grads(shape, kernel, stride, pad):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w = jnp.asarray(rng.normal(size=kernel), jnp.float32)
  padding = ((pad, pad), (pad, pad))

  def run(conv):
    return lambda x, w: jnp.sum(jnp.sin(conv(x, w, (stride, stride), padding,
                                             dimension_numbers=_dn(x, w))))

  fast, ref = run(layers.dense_conv_general_dilated), run(jax.lax.conv_general_dilated)
  np.testing.assert_allclose(fast(x, w), ref(x, w), rtol=1e-4)
  for a, b in zip(jax.grad(fast, (0, 1))(x, w), jax.grad(ref, (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
