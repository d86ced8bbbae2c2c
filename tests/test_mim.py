"""MIM pretraining (spec §4.2): masking, sparse encoder without leakage, decoder token order,
normalised-pixel loss, weight transfer to finetuning, and the pretraining/finetuning jobs."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from spikejax.models import create_model
from spikejax.models import mim
from spikejax.train import checkpoints

TINY = dict(embed_dims=(8, 16, 16), depth=2, strides=(2, 2, 2, 1), img_size=(32, 32),
            decoder_dim=16, decoder_depth=1, decoder_heads=4, in_channels=1)


def _counts(model):
  trainable = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  frozen = sum(x.size for x in jax.tree.leaves(nnx.state(model, mim.Frozen)))
  return trainable, frozen


@pytest.mark.parametrize("name,trainable,total", [
    ("spikmae_12_512", 85_464_128, 85_614_656),
    ("spikmae_12_768", 173_575_904, 173_776_608),
])
def test_mae_parameter_counts(name, trainable, total):
  m = nnx.eval_shape(lambda: create_model(name, rngs=nnx.Rngs(0)))
  t, f = _counts(m)
  assert (t, t + f) == (trainable, total)
  assert m.grid == (14, 14) and m.patch == 16
  assert m.pos_embed.shape == (1, m.config.embed_dims[2], 196)
  assert m.decoder_pos_embed.shape == (1, 196, 256)


def test_random_masking_keeps_int_l_times_one_minus_r():
  active, ids_restore = mim.random_masking(jax.random.key(0), 3, (14, 14), 0.5)
  assert active.shape == (3, 14, 14)
  np.testing.assert_array_equal(np.asarray(active).reshape(3, -1).sum(1), [98, 98, 98])
  for row in np.asarray(ids_restore):
    assert sorted(row) == list(range(196))
  np.testing.assert_array_equal(np.asarray(active).reshape(3, -1), np.asarray(ids_restore) < 98)
  a2, _ = mim.random_masking(jax.random.key(0), 3, (4, 4), 0.75)
  assert np.asarray(a2).reshape(3, -1).sum(1).tolist() == [4, 4, 4]
  with pytest.raises(ValueError, match="mask_ratio"):
    mim.random_masking(jax.random.key(0), 1, (4, 4), 1.0)


def test_patch_order_channel_fastest_and_inverse():
  x = np.arange(2 * 4 * 4 * 3, dtype=np.float32).reshape(2, 4, 4, 3)
  p = np.asarray(mim.patchify(jnp.asarray(x), 2))
  assert p.shape == (2, 4, 12)
  # patch 1 = rows 0-1, cols 2-3; vector order (row-in-patch, col-in-patch, channel)
  np.testing.assert_array_equal(p[0, 1], x[0, 0:2, 2:4, :].reshape(-1))
  np.testing.assert_array_equal(np.asarray(mim.unpatchify(jnp.asarray(p), 2, (2, 2), 3)), x)


def test_loss_normalises_with_unbiased_variance_and_counts_masked_only():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 8, 8, 1)).astype(np.float32) * 3 + 1
  t = np.asarray(mim.patchify(jnp.asarray(x), 4))
  ref = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, ddof=1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(np.asarray(mim.normalized_targets(jnp.asarray(x), 4)), ref,
                             rtol=1e-5, atol=1e-5)
  active = jnp.asarray([[[1, 0], [0, 1]], [[0, 0], [1, 1]]], jnp.float32)
  pred = jnp.asarray(rng.normal(size=(2, 4, 16)).astype(np.float32))
  masked = 1 - np.asarray(active).reshape(2, 4)
  want = (((np.asarray(pred) - ref) ** 2).mean(-1) * masked).sum() / (masked.sum() + 1e-8)
  np.testing.assert_allclose(float(mim.mim_loss(pred, jnp.asarray(x), active, 4)), want,
                             rtol=1e-5)
  # predictions at visible patches do not matter
  pred2 = pred.at[0, 0].add(5.0).at[1, 3].add(-7.0)
  assert float(mim.mim_loss(pred2, jnp.asarray(x), active, 4)) == pytest.approx(want, rel=1e-5)


@pytest.fixture(scope="module")
def tiny_mae():
  return create_model("spikmae_12_512", rngs=nnx.Rngs(0), **TINY)


def test_no_information_leaks_from_masked_pixels(tiny_mae):
  """Masked pixels change nothing the encoder (or decoder) outputs; masked positions stay 0."""
  m = tiny_mae
  m.eval()
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 1))
  active, ids = m.random_mask(2, jax.random.key(2))
  up = mim.upsample_mask(active, 32, 32)
  x2 = x + (1 - up) * jax.random.normal(jax.random.key(3), x.shape) * 10
  stages1 = m.stage_features(x, active)
  stages2 = m.stage_features(x2, active)
  for name, s1 in stages1.items():
    np.testing.assert_array_equal(np.asarray(s1), np.asarray(stages2[name]), err_msg=name)
    if s1.ndim == 4:  # conv stages: exactly zero at masked positions
      mk = np.asarray(mim.upsample_mask(active, s1.shape[1], s1.shape[2]))
      assert np.all(np.asarray(s1)[mk[..., 0] == 0] == 0), name
  p1 = m.forward_decoder(m.forward_encoder(x, active), ids)
  p2 = m.forward_decoder(m.forward_encoder(x2, active), ids)
  np.testing.assert_array_equal(np.asarray(p1), np.asarray(p2))
  m.train()
  # in training too (sparse BN statistics over visible positions only)
  l1, pr1, _ = m(x, jax.random.key(2))      # key 2: the mask ``active`` above
  m2 = create_model("spikmae_12_512", rngs=nnx.Rngs(0), **TINY)
  l2, pr2, _ = m2(x2, jax.random.key(2))
  np.testing.assert_array_equal(np.asarray(pr1), np.asarray(pr2))


def test_decoder_token_order_spatial_and_official(tiny_mae):
  m = tiny_mae
  m.eval()
  latent = jax.random.normal(jax.random.key(0), (2, 16, 16))
  _, ids = m.random_mask(2, jax.random.key(5))
  spatial = m.forward_decoder(latent, ids)
  # spatial order: ids_restore plays no part
  np.testing.assert_array_equal(np.asarray(spatial),
                                np.asarray(m.forward_decoder(latent, ids[:, ::-1])))
  official = create_model("spikmae_12_512", rngs=nnx.Rngs(0), token_order="official", **TINY)
  nnx.update(official, nnx.state(m))
  official.eval()
  got = official.forward_decoder(latent, ids)
  # official: decoder position i receives the token of spatial position ids_restore[i]
  permuted = jnp.take_along_axis(latent, ids[..., None], axis=1)
  np.testing.assert_allclose(np.asarray(got), np.asarray(m.forward_decoder(permuted, ids)),
                             rtol=1e-6, atol=1e-6)
  assert not np.allclose(np.asarray(got), np.asarray(spatial))
  with pytest.raises(ValueError, match="token_order"):
    create_model("spikmae_12_512", rngs=nnx.Rngs(0), token_order="shuffled", **TINY)


def test_bad_mim_options_are_named():
  with pytest.raises(ValueError, match="whole number of 8-pixel patches"):
    create_model("spikmae_12_512", rngs=nnx.Rngs(0), **dict(TINY, img_size=(30, 30)))
  with pytest.raises(TypeError, match="unknown option 'layer_scale'"):
    create_model("spikmae_12_512", rngs=nnx.Rngs(0), layer_scale=1e-6, **TINY)
  m = create_model("spikmae_12_512", rngs=nnx.Rngs(0), **TINY)
  with pytest.raises(ValueError, match="built for"):
    m(jnp.zeros((1, 64, 64, 1)))


def test_weight_transfer_mae_to_finetuning(tiny_mae):
  mae = tiny_mae
  enc = {k: v for k, v in TINY.items() if k in ("embed_dims", "depth", "strides", "in_channels")}
  ft = create_model("spikformer12_512", num_classes=10, rngs=nnx.Rngs(7), **enc)
  values = {"/".join(str(p) for p in k): v.get_value()
            for k, v in nnx.to_flat_state(nnx.state(mae))}
  report = checkpoints.transfer_weights(values, ft)
  assert "block3/0/attn/q_conv/conv/conv1/conv/kernel" in report["loaded"]
  assert "downsample1_1/encode_bn/mean" in report["loaded"]          # BN statistics carry over
  assert set(report["fresh"]) >= {"head/kernel", "head/bias", "block3/0/layer_scale1",
                                  "head_kd/kernel"}
  assert {"pos_embed", "mask_token", "norm/scale", "decoder_embed/kernel"} <= set(
      report["dropped"])
  np.testing.assert_array_equal(np.asarray(ft.block3[1].mlp.fc1_conv.kernel[...]),
                                np.asarray(mae.block3[1].mlp.fc1_conv.kernel[...]))
  np.testing.assert_array_equal(np.asarray(ft.block3[0].layer_scale1[...]), np.float32(1e-6))
  # first-stage width mismatch (official 192 vs 196): a clear error, nothing loaded
  wide = create_model("spikformer12_512", num_classes=10, rngs=nnx.Rngs(7),
                      **dict(enc, embed_dims=(10, 16, 16)))
  before = np.asarray(wide.block3[0].mlp.fc1_conv.kernel[...]).copy()
  with pytest.raises(ValueError, match="other shapes.*Nothing was loaded"):
    checkpoints.transfer_weights(values, wide)
  np.testing.assert_array_equal(np.asarray(wide.block3[0].mlp.fc1_conv.kernel[...]), before)


def test_distillation_loss_uses_teacher_argmax():
  from spikejax.train.trainer import _classify_loss
  logits = jnp.asarray([[2.0, 0.0, 0.0]])
  logits_kd = jnp.asarray([[0.0, 0.0, 3.0]])
  batch = {"target": jnp.asarray([[1.0, 0.0, 0.0]])}
  teacher = jnp.asarray([[0.1, 0.2, 5.0]])
  ce = lambda z, k: float(-jax.nn.log_softmax(z)[0, k])
  loss, avg = _classify_loss((logits, logits_kd), batch, teacher, 0.5)
  assert float(loss) == pytest.approx(0.5 * ce(logits, 0) + 0.5 * ce(logits_kd, 2), rel=1e-6)
  np.testing.assert_allclose(np.asarray(avg), [[1.0, 0.0, 1.5]])
  loss_nt, _ = _classify_loss((logits, logits_kd), batch, None, 0.5)   # no teacher: the label
  assert float(loss_nt) == pytest.approx(0.5 * ce(logits, 0) + 0.5 * ce(logits_kd, 0), rel=1e-6)


FMNIST = "/usr/share/datasets/fashion-mnist"


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="apt-get install -y dataset-fashion-mnist")
def test_pretrain_resume_exact_then_finetune_and_distill(tmp_path):
  """MIM runlocal: 4 steps == 2 steps + resume (the mask stream is checkpointed); then a
  finetuning run initialised from it and a distillation run with a teacher."""
  from configs import mim_fashion_mnist as M
  from spikejax.train import trainer

  def cfg(arg, **over):
    c = M.get_config(arg)
    c.max_train_steps = 4
    for k, v in over.items():
      c[k] = v
    return c

  full, part = str(tmp_path / "full"), str(tmp_path / "part")
  s = trainer.train_and_evaluate(cfg("pretrain,runlocal", eval_every_steps=2), full)
  assert s["step"] == 4 and s["best_loss"] is not None and s["best_accuracy"] is None
  assert [r["step"] for r in s["history"]] == [2, 4]   # evaluations do not touch training
  assert "test_loss" in s["history"][-1] and "test_accuracy" not in s["history"][-1]
  assert s["history"][-1]["erank"] >= 1.0
  trainer.train_and_evaluate(cfg("pretrain,runlocal", stop_after_steps=2), part)
  trainer.train_and_evaluate(cfg("pretrain,runlocal"), part)
  a = checkpoints.read_model_values(full)
  b = checkpoints.read_model_values(part)
  assert a.keys() == b.keys()
  as_np = lambda v: np.asarray(jax.random.key_data(v) if jnp.issubdtype(
      getattr(v, "dtype", np.float32), jax.dtypes.prng_key) else v)
  assert any("mask_rngs" in k for k in a)
  for k in a:
    np.testing.assert_array_equal(as_np(a[k]), as_np(b[k]), err_msg=k)

  ft = str(tmp_path / "ft")
  s = trainer.train_and_evaluate(cfg("finetune,runlocal", init_from=full), ft)
  assert s["step"] == 4 and s["best_accuracy"] is not None
  # (the finetuned model starts from the pretrained encoder: checked by transfer_weights' test)

  distill = cfg("finetune,runlocal")
  distill.model.kd = True
  distill.distill = {"teacher": ft, "alpha": 0.5}
  s = trainer.train_and_evaluate(distill, str(tmp_path / "kd"))
  assert s["step"] == 4 and np.isfinite(s["history"][-1]["test_loss"])

  bad = cfg("finetune,runlocal", init_from=str(tmp_path / "nope"))
  with pytest.raises(trainer.ConfigError, match="init_from"):
    trainer.validate(bad, jax.device_count())
  wrong = cfg("pretrain,runlocal")
  wrong.task = "classify"
  with pytest.raises(trainer.ConfigError, match="spikmae"):
    trainer.validate(wrong, jax.device_count())


def test_imagenet_large_recipes(tmp_path):
  """The 83M/173M recipes as specified, and their runlocal modes end to end on mock ImageNet:
  MIM pretraining (fsdp 2 x data 4), then finetuning initialised from it."""
  import tensorflow_datasets as tfds
  from configs import imagenet_large, imagenet_mim
  from spikejax.train import trainer
  pre = imagenet_mim.get_config("768")
  assert pre.model_name == "spikmae_12_768" and pre.batch_size == 2048
  assert abs(pre.optimizer.lr - 1.2e-3) < 1e-12 and pre.optimizer.eps == 1e-4
  assert pre.optimizer.b2 == 0.95 and pre.optimizer.decay_all and pre.model.mask_ratio == 0.5
  ft = imagenet_large.get_config("finetune")
  assert ft.model_name == "spikformer12_768" and ft.optimizer.name == "lamb"
  assert abs(ft.optimizer.lr - 2.4e-3) < 1e-12 and ft.optimizer.layer_decay == 0.75
  assert tuple(ft.model.embed_dims) == (192, 384, 768) and ft.augment.mixup == 0.8
  kd = imagenet_large.get_config("distill")
  assert kd.model_name == "spikformer12_512" and kd.model.kd and kd.batch_size == 1568
  assert abs(kd.optimizer.lr - 6.125e-3) < 1e-12 and kd.augment.mixup == 0.5

  wd_pre, wd_ft = str(tmp_path / "pre"), str(tmp_path / "ft")
  with tfds.testing.mock_data(num_examples=48):
    s = trainer.train_and_evaluate(imagenet_mim.get_config("768,runlocal"), wd_pre)
    assert s["step"] == 2 and np.isfinite(s["best_loss"])
    c = imagenet_large.get_config("finetune,runlocal")
    c.init_from = wd_pre
    s = trainer.train_and_evaluate(c, wd_ft)
  assert s["step"] == 2 and s["best_accuracy"] is not None


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="apt-get install -y dataset-fashion-mnist")
def test_multihost_pretraining_checkpoint_then_single_process_resume(tmp_path):
  """Two processes on 127.0.0.1 (2 CPU devices each) pretrain 2 steps and checkpoint; one
  process (4 devices) resumes from that checkpoint and finishes."""
  import json
  import socket
  import subprocess
  import sys
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  wd = str(tmp_path / "wd")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  base = [sys.executable, "-m", "spikejax.main", "--config=configs/mim_fashion_mnist.py:"
          "pretrain,runlocal", f"--workdir={wd}", "--config.max_train_steps=4"]

  def env(devices):
    e = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=os.environ.get("SPIKEJAX_TEST_COMPILE_FLAGS", "") +
             f" --xla_force_host_platform_device_count={devices}")
    return e

  procs = [subprocess.Popen(base + ["--config.stop_after_steps=2",
                                    f"--coordinator_address=127.0.0.1:{port}",
                                    "--num_processes=2", f"--process_id={i}"],
                            cwd=repo, env=env(2), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = [p.communicate(timeout=600)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  assert "devices 4" in logs[0] and os.path.isdir(os.path.join(wd, "checkpoints", "2"))
  one = subprocess.run(base, cwd=repo, env=env(4), capture_output=True, text=True, timeout=600)
  assert one.returncode == 0, (one.stdout + one.stderr)[-3000:]
  assert "resume at 2" in one.stdout + one.stderr
  summary = json.loads(one.stdout.strip().splitlines()[-1])
  assert summary["step"] == 4 and summary["checkpoint"].endswith("/4")
