"""LARGE family (spec §4.1, §9.2): counts, forward/heads, sparse conv stages, drop path, conversion."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spikejax import convert
from spikejax.models import (LARGE_STAGES, SpikeConfig, Spikformer, SpikformerConfig,
                             SpikformerEncoder, count_params, create_model, get_variant,
                             list_models, upsample_mask)
from spikejax.models.spikformer import CONV_STAGES, DownSampling, DropPath

LISTING = pathlib.Path(__file__).resolve().parents[2] / "shared" / "spec" / \
    "official_param_listing.txt"
needs_listing = pytest.mark.skipif(not LISTING.exists(), reason=f"{LISTING} is absent")

LARGE_SPIKE = SpikeConfig(rounding="half_up", window="open")
TINY = dict(embed_dims=(16, 32, 64), depth=2, num_classes=10)


def abstract_model(name, **kw):
  return nnx.eval_shape(lambda: create_model(name, **kw))


def n_params(model):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def images(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name,kw,count", [
    ("spikformer12_512", {}, 83_015_952),
    ("spikformer12_768", {}, 171_740_714),
    ("spikformer12_768", {"embed_dims": (192, 384, 768)}, 171_579_824),   # spec §8 trap 6
    ("spikformer12_512", {"kd": False}, 82_502_952),
    ("spikformer12_768", {"kd": False}, 170_971_714),
])
def test_param_counts_pinned(name, kw, count):
  assert n_params(abstract_model(name, **kw)) == count


def test_registry_names_and_neuron_defaults():
  assert get_variant("spikformer_12_768").name == "spikformer12_768"   # Train_Large.md spelling
  assert {"spikformer12_512", "spikformer12_768"} <= set(list_models())
  assert "spikformer_12_768" in list_models(include_aliases=True)
  for name, rep in [("spikformer12_512", True), ("spikformer12_768", False)]:
    v = get_variant(name)
    assert v.family == "spikformer" and v.official == name
    m = abstract_model(name)
    assert isinstance(m, Spikformer)
    assert m.config.rep_conv2 is rep and m.config.kd and m.config.layer_scale == 1e-6
    assert (m.spike.rounding, m.spike.window, m.spike.spike_max, m.spike.time_steps) == \
        ("half_up", "open", 4, 1)
  assert abstract_model("spikformer12_768").config.embed_dims == (196, 384, 768)
  m = abstract_model("spikformer12_768", embed_dims=[192, 384, 768], spike_max=8)
  assert m.config.embed_dims == (192, 384, 768) and m.spike.spike_max == 8


def test_unknown_option_and_bad_config():
  with pytest.raises(TypeError, match="unknown option 'block_depths' for a LARGE Spikformer"):
    create_model("spikformer12_512", block_depths=(6, 2))
  bad = [({"embed_dims": (97, 32, 64)}, "even first"), ({"embed_dims": (16, 32)}, "3 positive"),
         ({"embed_dims": (16, 32, 60)}, "divisible by num_heads"),
         ({"strides": (2, 2, 2)}, "strides must be 4"), ({"depth": 0}, "depth must be"),
         ({"drop_path_rate": 1.0}, r"drop_path_rate must be in \[0, 1\)"),
         ({"layer_scale": 0.0}, "layer_scale must be"), ({"drop_path_per": "x"}, "drop_path_per"),
         ({"rep_hidden_ratio": 0}, "rep_hidden_ratio"), ({"conv_depths": (1, -1, 2)}, "conv_depths"),
         ({"num_heads": 0}, "num_heads must be"), ({"remat": "some"}, "remat must be one of")]
  for kw, msg in bad:
    with pytest.raises(ValueError, match=msg):
      SpikformerConfig(**{**TINY, **kw})


# --------------------------------------------------------------------------- forward


@pytest.fixture(scope="module")
def tiny():
  return Spikformer(SpikformerConfig(**TINY), LARGE_SPIKE, rngs=nnx.Rngs(0))


def test_forward_train_tuple_eval_average(tiny):
  x = images((2, 32, 32, 3))
  f = nnx.jit(lambda m, x: m(x))
  tiny.train()
  out = f(tiny, x)
  assert isinstance(out, tuple) and len(out) == 2
  assert all(o.shape == (2, 10) and o.dtype == jnp.float32 for o in out)
  assert not np.allclose(np.asarray(out[0]), np.asarray(out[1]))
  tiny.eval()
  try:
    logits, stages = nnx.jit(lambda m, x: (m(x), m.stage_features(x)))(tiny, x)
    assert logits.shape == (2, 10)
    assert sorted(stages) == sorted(LARGE_STAGES)
    assert stages["downsample1_1"].shape == (2, 16, 16, 8)
    assert stages["conv_block2_2"].shape == (2, 4, 4, 32)
    assert stages["block3"].shape == (2, 4, 64)               # tokens (T*B, N, C)
    pooled = jnp.mean(stages["block3"], axis=1)
    want = (tiny.head(pooled) + tiny.head_kd(tiny.head_spike(pooled))) / 2
    np.testing.assert_allclose(np.asarray(logits), np.asarray(want), rtol=1e-5, atol=1e-6)
    # the kd head reads integer spikes (norm 1), the main head the raw pooled features
    s = np.asarray(tiny.head_spike(pooled))
    assert np.array_equal(s, np.round(s)) and s.max() <= 4
  finally:
    tiny.train()


def test_no_kd_single_output_and_time_steps():
  m = Spikformer(SpikformerConfig(**TINY, kd=False), SpikeConfig(rounding="half_up",
                                                                   window="open", time_steps=2),
                 rngs=nnx.Rngs(1))
  assert not hasattr(m, "head_kd")
  x = images((2, 32, 32, 3))
  assert m(x).shape == (2, 10)                                 # repeated over T = 2
  assert m(jnp.stack([x, x])).shape == (2, 10)                 # time-major frames
  with pytest.raises(ValueError, match="frames on axis 0.*time_steps=2"):
    m(jnp.zeros((3, 2, 32, 32, 3)))


def test_head_init_xavier_zero_bias(tiny):
  k = np.asarray(tiny.head.kernel[...])
  bound = np.sqrt(6.0 / (64 + 10))
  assert np.abs(k).max() <= bound and np.abs(k).max() > 0.5 * bound
  assert not np.any(np.asarray(tiny.head.bias[...]))
  assert not np.any(np.asarray(tiny.head_kd.bias[...]))
  np.testing.assert_array_equal(np.asarray(tiny.block3[0].layer_scale1[...]),
                                np.full(64, 1e-6, np.float32))


# --------------------------------------------------------------------------- sparse conv stages


def test_upsample_mask_nearest():
  a = jnp.asarray([[[1, 0], [0, 1]]], jnp.float32)
  up = upsample_mask(a, 4, 4)
  assert up.shape == (1, 4, 4, 1)
  np.testing.assert_array_equal(np.asarray(up[0, :, :, 0]),
                                np.kron(np.asarray(a[0]), np.ones((2, 2))))
  assert upsample_mask(a[..., None], 2, 2).shape == (1, 2, 2, 1)
  with pytest.raises(ValueError, match="mask must be"):
    upsample_mask(jnp.ones((4, 4)), 8, 8)


def test_sparse_downsampling_matches_bn_over_active_positions():
  ds = DownSampling(4, 6, LARGE_SPIKE, rngs=nnx.Rngs(0))
  x = images((2, 8, 8, 4), seed=1)
  mask = jnp.asarray(np.random.default_rng(2).random((2, 2, 2)) < 0.5, jnp.float32)
  mask = mask.at[0, 0, 0].set(1.0)
  y = ds(x, mask)
  z = np.asarray(ds.encode_conv(ds.encode_spike(x)))            # dense conv, (2, 4, 4, 6)
  m = np.asarray(upsample_mask(mask, 4, 4))[..., 0].astype(bool)
  act = z[m]                                                    # (#active, C)
  mean, var = act.mean(0), act.var(0)
  want = np.where(m[..., None], (z - mean) / np.sqrt(var + 1e-5), 0.0)
  np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-5)
  assert np.all(np.asarray(y)[~m] == 0.0)
  n = act.shape[0]
  np.testing.assert_allclose(np.asarray(ds.encode_bn.mean[...]), 0.1 * mean, rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(np.asarray(ds.encode_bn.var[...]),
                             0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)


def test_masked_conv_pyramid_zero_and_no_leakage():
  enc = SpikformerEncoder(SpikformerConfig(**TINY, layer_scale=None, drop_path_rate=0.0),
                          LARGE_SPIKE, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(3)
  x = np.asarray(images((2, 64, 64, 3), seed=4))               # token grid 4x4
  mask = (rng.random((2, 4, 4)) < 0.5).astype(np.float32)
  mask[:, 0, 0], mask[:, 3, 3] = 1.0, 0.0
  pix = np.asarray(upsample_mask(jnp.asarray(mask), 64, 64))[..., 0].astype(bool)
  x2 = np.where(pix[..., None], x, rng.normal(size=x.shape) * 5).astype(np.float32)
  f = nnx.jit(lambda m, x, k: m.stage_features(x, k))
  for mode in ("train", "eval"):
    getattr(enc, mode)()
    s1 = f(enc, jnp.asarray(x), jnp.asarray(mask))
    s2 = f(enc, jnp.asarray(x2), jnp.asarray(mask))
    for name in CONV_STAGES:
      a, b = np.asarray(s1[name]), np.asarray(s2[name])
      keep = np.asarray(upsample_mask(jnp.asarray(mask), a.shape[1], a.shape[2]))[..., 0] > 0
      assert np.all(a[~keep] == 0.0), (mode, name)             # masked positions exactly 0
      assert np.any(a[keep] != 0.0), (mode, name)
      np.testing.assert_array_equal(a, b, err_msg=f"{mode} {name}")   # no leakage
  # an all-ones mask is the dense model
  enc.train()
  dense = enc.stage_features(jnp.asarray(x))
  ones = enc.stage_features(jnp.asarray(x), jnp.ones((2, 4, 4)))
  for name in LARGE_STAGES:
    np.testing.assert_allclose(np.asarray(dense[name]), np.asarray(ones[name]), rtol=1e-4,
                               atol=1e-4)
  with pytest.raises(ValueError, match=r"mask must be the active map \(B=2"):
    enc.forward_features(jnp.asarray(x), jnp.ones((3, 4, 4)))


# --------------------------------------------------------------------------- drop path


def test_drop_path_module():
  dp = DropPath(0.5, time_steps=2, rngs=nnx.Rngs(0))
  x = jnp.ones((2 * 16, 3, 5))
  y = np.asarray(dp(x))
  assert set(np.unique(y)) == {0.0, 2.0}
  per = y.reshape(2, 16, -1)
  assert np.all(per == per[..., :1])                           # one draw per sample
  assert np.array_equal(per[0], per[1])                        # shared by its T timesteps
  assert not np.array_equal(y, np.asarray(dp(x)))              # the stream advances
  dp.eval()
  np.testing.assert_array_equal(np.asarray(dp(x)), np.asarray(x))
  zero = DropPath(0.0, time_steps=2)
  assert zero.rngs is None
  np.testing.assert_array_equal(np.asarray(zero(x)), np.asarray(x))
  ts = DropPath(0.5, time_steps=4, per="timestep", rngs=nnx.Rngs(1))
  y = np.asarray(ts(jnp.ones((4 * 8, 3)))).reshape(4, -1)
  assert np.all(y == y[:, :1])                                 # one draw per timestep
  with pytest.raises(ValueError, match="needs rngs"):
    DropPath(0.1, time_steps=1)


def test_drop_path_in_model_train_vs_eval():
  cfg = SpikformerConfig(**TINY, drop_path_rate=0.9, layer_scale=1.0, kd=False)
  m = Spikformer(cfg, LARGE_SPIKE, rngs=nnx.Rngs(0))
  assert [blk.drop_path.rate for blk in m.block3] == [0.0, 0.9]
  x = images((2, 32, 32, 3))
  f = nnx.jit(lambda m, x: m(x))
  a, b = np.asarray(f(m, x)), np.asarray(f(m, x))
  assert not np.array_equal(a, b)                              # stochastic, rng threaded by jit
  m.eval()
  np.testing.assert_array_equal(np.asarray(f(m, x)), np.asarray(f(m, x)))
  m0 = Spikformer(SpikformerConfig(**TINY, drop_path_rate=0.0, kd=False), LARGE_SPIKE,
                  rngs=nnx.Rngs(0))
  np.testing.assert_array_equal(np.asarray(f(m0, x)), np.asarray(f(m0, x)))   # train, rate 0


@pytest.mark.parametrize("remat", ["dots", "full"])
def test_remat_keeps_values_gradients_and_statistics(remat):
  """SpikformerConfig.remat recomputes in the backward pass: same loss, gradients, BN
  statistics and drop-path draws as without it (the MIM mask path too)."""
  x = images((2, 32, 32, 3))
  mask = jnp.asarray(np.random.default_rng(3).random((2, 2, 2)) > 0.5, jnp.float32)
  out = {}
  for r in ("none", remat):
    m = SpikformerEncoder(SpikformerConfig(**TINY, drop_path_rate=0.5, remat=r), LARGE_SPIKE,
                          rngs=nnx.Rngs(0))
    m.train()

    def loss(m):
      return jnp.mean(m.forward_features(x, mask) ** 2) + jnp.mean(
          m.forward_features(x) ** 2)

    val, g = nnx.jit(nnx.value_and_grad(loss))(m)
    out[r] = (val, jax.tree.leaves(nnx.state(g)), jax.tree.leaves(nnx.state(m, nnx.BatchStat)))
  assert float(out[remat][0]) == float(out["none"][0]) and float(out["none"][0]) > 0
  for a, b in zip(out[remat][1] + out[remat][2], out["none"][1] + out["none"][2]):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert any(float(jnp.sum(jnp.abs(g))) > 0 for g in out["none"][1])


# --------------------------------------------------------------------------- conversion


def _listing_section(title):
  out, kinds, inside = {}, {}, False
  for line in LISTING.read_text().splitlines():
    if line.startswith("## "):
      inside = line.endswith(":: " + title)
      continue
    if inside and line and not line.startswith("#"):
      key, shape, _, kind = line.split("\t")[:4]
      out[key] = tuple(int(d) for d in shape.strip("()").split(",") if d.strip())
      kinds[key] = kind
  return out, kinds


def _our_official_shapes(model):
  flat = nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat)))
  return {convert.to_official_key(p): convert._expected_official_shape(tuple(v.get_value().shape))
          for p, v in flat}


def _squeeze(shape, ours):
  while len(shape) > 2 and shape[-1] == 1 and len(ours) == 2:
    shape = shape[:-1]
  return shape


@needs_listing
@pytest.mark.parametrize("name,title,entries,params", [
    ("spikformer12_512", "spikformer12_512(kd=True)", 1240, 83_015_952),
    ("spikformer12_768", "spikformer12_768(kd=True)", 1096, 171_740_714)])
def test_keys_shapes_and_count_match_official_listing(name, title, entries, params):
  listing, kinds = _listing_section(title)
  assert len(listing) == entries
  assert sum(int(np.prod(s)) for k, s in listing.items() if kinds[k] == "param") == params
  model = abstract_model(name)
  assert n_params(model) == params
  listing = {k: v for k, v in listing.items() if not k.endswith("num_batches_tracked")}
  ours = _our_official_shapes(model)
  assert set(ours) == set(listing)
  for key, shape in listing.items():
    assert ours[key] == _squeeze(shape, ours[key]), key


@needs_listing
def test_encoder_keys_match_mim_encoder_listing():
  """The MAE encoder (no layer scale) has the keys of ``spikmae_12_512`` minus the MIM parts."""
  listing, _ = _listing_section("spikmae_12_512()")
  mim_only = ("pos_embed", "mask_token", "decoder", "norm.")
  listing = {k: v for k, v in listing.items()
             if not k.endswith("num_batches_tracked") and not k.startswith(mim_only)}
  enc = nnx.eval_shape(lambda: SpikformerEncoder(
      SpikformerConfig(layer_scale=None, drop_path_rate=0.0), LARGE_SPIKE, rngs=nnx.Rngs(0)))
  ours = _our_official_shapes(enc)
  assert set(ours) == set(listing)
  for key, shape in listing.items():
    assert ours[key] == _squeeze(shape, ours[key]), key


def _old_spelling(key):
  """``ConvBlock1_1.0.conv1.0.0.weight`` -> ``ConvBlock1_1.0.conv1.0.module.0.weight``."""
  parts = key.split(".")
  if parts[0].startswith("ConvBlock") and parts[2] in ("conv1", "conv2"):
    parts.insert(4, "module")
  return ".".join(parts)


@needs_listing
def test_full_size_synthetic_state_dict_loads_both_spellings():
  listing, _ = _listing_section("spikformer12_512(kd=True)")
  rng = np.random.default_rng(0)
  sd = {k: (np.asarray(7) if k.endswith("num_batches_tracked")
            else rng.standard_normal(s, dtype=np.float32)) for k, s in listing.items()}
  model = abstract_model("spikformer12_512")     # shapes only: loading fills every variable
  convert.load_official_state_dict(model, sd)
  flat = list(nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))))
  used = set()
  for path, var in flat:
    key = convert.to_official_key(path)
    used.add(key)
    got = var.get_value()
    assert isinstance(got, np.ndarray), key                    # no abstract leaf left
    want = sd[key]
    if want.ndim == 4:
      want = want.transpose(2, 3, 1, 0)                        # OIHW -> HWIO
    elif want.ndim in (2, 3):
      want = want.reshape(want.shape[:2]).T                    # Linear / Conv1d -> (in, out)
    np.testing.assert_array_equal(got, want, err_msg=key)
  assert used == {k for k in sd if not k.endswith("num_batches_tracked")}
  old = {_old_spelling(k): v for k, v in sd.items()}
  assert sum(".module." in k for k in old) == 4 * 2 * 7       # 4 blocks x conv1/2 x 7 entries
  model2 = abstract_model("spikformer12_512")
  convert.load_official_state_dict(model2, old)
  flat2 = dict(nnx.to_flat_state(nnx.state(model2, nnx.Any(nnx.Param, nnx.BatchStat))))
  for path, var in flat:
    np.testing.assert_array_equal(flat2[path].get_value(), var.get_value())


@pytest.fixture(scope="module")
def tiny_state_dict(tiny):
  """An official-layout state dict from our tiny model (Conv1d weights as (out, in, 1))."""
  sd = convert.export_state_dict(tiny)
  for k in list(sd):
    if sd[k].ndim == 2 and not k.startswith("head"):
      sd[k] = sd[k][..., None]
    if k.endswith("running_var"):
      sd[k.replace("running_var", "num_batches_tracked")] = np.asarray(3)
  return sd


def test_tiny_roundtrip_and_forward_equal(tiny, tiny_state_dict):
  assert "ConvBlock2_2.0.conv2.0.1.running_var" in tiny_state_dict
  assert "block3.1.attn.proj_conv.0.conv2.0.weight" in tiny_state_dict
  other = Spikformer(SpikformerConfig(**TINY), LARGE_SPIKE, rngs=nnx.Rngs(42))
  convert.load_official_state_dict(other, {_old_spelling(k): v
                                           for k, v in tiny_state_dict.items()})
  a = nnx.to_flat_state(nnx.state(tiny, nnx.Any(nnx.Param, nnx.BatchStat)))
  b = dict(nnx.to_flat_state(nnx.state(other, nnx.Any(nnx.Param, nnx.BatchStat))))
  for path, v in a:
    np.testing.assert_array_equal(np.asarray(v.get_value()), np.asarray(b[path].get_value()))
  assert count_params(other) == count_params(tiny)


def test_large_missing_unexpected_and_misshaped_keys(tiny, tiny_state_dict):
  model = Spikformer(SpikformerConfig(**TINY), LARGE_SPIKE, rngs=nnx.Rngs(5))
  before = np.asarray(model.head_kd.kernel[...]).copy()
  sd = dict(tiny_state_dict)
  del sd["block3.1.layer_scale2"]
  sd["block3.0.rep_conv.conv3.0.weight"] = np.zeros((64, 64, 1), np.float32)
  with pytest.raises(ValueError, match=r"1 missing key\(s\): \['block3.1.layer_scale2'\].*"
                     r"1 unexpected key\(s\): \['block3.0.rep_conv.conv3.0.weight'\]"):
    convert.load_official_state_dict(model, sd)
  sd = dict(tiny_state_dict)
  sd["block3.0.attn.q_conv.0.conv1.0.weight"] = np.zeros((64, 64, 1), np.float32)
  sd["head_kd.weight"] = np.ones((10, 64), np.float32)
  with pytest.raises(ValueError, match=r"shape mismatch for 'block3.0.attn.q_conv.0.conv1.0"
                     r".weight': the checkpoint has \(64, 64, 1\), the model expects \(96, 64\)"):
    convert.load_official_state_dict(model, sd)
  np.testing.assert_array_equal(np.asarray(model.head_kd.kernel[...]), before)
  sd = dict(tiny_state_dict)
  sd[_old_spelling("ConvBlock1_1.0.conv1.0.0.weight")] = sd["ConvBlock1_1.0.conv1.0.0.weight"]
  with pytest.raises(ValueError, match="another spelling"):
    convert.load_official_state_dict(model, sd)


def test_official_key_names():
  key = convert.to_official_key
  assert key(("conv_block1_1", 0, "conv1", "conv", "kernel")) == "ConvBlock1_1.0.conv1.0.0.weight"
  assert key(("conv_block2_2", 0, "conv2", "bn", "mean")) == "ConvBlock2_2.0.conv2.0.1.running_mean"
  assert key(("block3", 3, "rep_conv", "conv2", "bn", "scale")) == "block3.3.rep_conv.conv2.1.weight"
  assert key(("block3", 0, "attn", "v_conv", "conv", "conv1", "conv", "kernel")) == \
      "block3.0.attn.v_conv.0.conv1.0.weight"
  assert key(("block3", 0, "attn", "proj_conv", "bn", "var")) == \
      "block3.0.attn.proj_conv.1.running_var"
  # BASE keys are unchanged
  assert key(("conv_block1_1", 0, "conv1", "kernel")) == "ConvBlock1_1.0.conv1.weight"
  assert key(("conv_block1_1", 0, "sep_conv", "pwconv1", "conv", "kernel")) == \
      "ConvBlock1_1.0.Conv.pwconv1.0.weight"
