"""Training checkpoints are verified, never trusted (spikejax.train.checkpoints.TrainCheckpointer):
a digest per array, no non-finite state saved, unreadable checkpoints moved aside (kept), and
no silent restart at step 0 over checkpoints that cannot be read."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from spikejax.train import checkpoints as C


class Tiny(nnx.Module):
  def __init__(self, rngs):
    self.a = nnx.Linear(16, 32, rngs=rngs)
    self.b = nnx.Linear(32, 4, rngs=rngs)
    self.bn = nnx.BatchNorm(32, rngs=rngs)


def _state(seed=0):
  model = Tiny(nnx.Rngs(seed))
  return model, nnx.Optimizer(model, optax.adamw(1e-3), wrt=nnx.Param)


def _values(model):
  return {"/".join(map(str, p)): np.asarray(v.get_value())
          for p, v in nnx.to_flat_state(nnx.state(model))}


def _saved(tmp_path, steps=(1, 2, 3)):
  """A checkpoint directory with ``steps``, each a model of its own seed."""
  ck = C.TrainCheckpointer(str(tmp_path / "checkpoints"), keep=3)
  for step in steps:
    model, opt = _state(seed=step)
    ck.save(step, model, opt)
  ck.wait()
  return ck


def _data_files(ck, step):
  root = os.path.join(ck.directory, str(step), "state")
  return [os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs
          if not f.startswith("_") and os.path.getsize(os.path.join(d, f)) > 0
          and "manifest" not in f]


def _restore_into_fresh(ck):
  model, opt = _state(seed=99)
  step = ck.restore_latest(model, opt)
  return step, model


def test_flipped_bytes_are_detected_and_the_previous_checkpoint_used(tmp_path, caplog):
  ck = _saved(tmp_path)
  for path in _data_files(ck, 3):          # a byte flipped every 512 bytes of every data file
    data = bytearray(open(path, "rb").read())
    for i in range(0, len(data), 512):
      data[i] ^= 0x40
    open(path, "wb").write(bytes(data))
  caplog.set_level("WARNING")
  step, model = _restore_into_fresh(C.TrainCheckpointer(ck.directory, keep=3))
  assert step == 2 and "checkpoint" in caplog.text and "/3 could not be restored" in caplog.text
  ref, _ = _state(seed=2)
  for k, v in _values(ref).items():        # exactly step 2's state, not a mixture
    np.testing.assert_array_equal(_values(model)[k], v, err_msg=k)
  # the corrupt step is kept aside (not deleted) and can be saved again
  aside = os.listdir(ck.directory + "_corrupt")
  assert len(aside) == 1 and aside[0].startswith("3-")
  ck2 = C.TrainCheckpointer(ck.directory, keep=3)
  assert sorted(ck2.manager.all_steps()) == [1, 2]
  m3, o3 = _state(seed=3)
  ck2.save(3, m3, o3)
  ck2.wait()
  assert _restore_into_fresh(C.TrainCheckpointer(ck.directory, keep=3))[0] == 3


def test_digest_mismatch_is_a_corrupt_checkpoint(tmp_path):
  """One array changed after saving (a value the storage decodes without error) is caught by
  its CRC32 digest."""
  ck = _saved(tmp_path, steps=(1,))
  model, opt = _state(seed=1)
  tree = ck._tree(model, opt, None)
  digests, bad = C.state_digests(tree)
  assert not bad and len(digests) == len(jax.tree.leaves(tree))
  changed = jax.tree.map(lambda x: x, tree)
  changed["model"]["a/kernel"] = changed["model"]["a/kernel"].at[0, 0].add(1e-7)
  got, _ = C.state_digests(changed)
  assert [k for k in digests if digests[k] != got[k]] == ["model/a/kernel"]


def test_all_checkpoints_unreadable_is_an_error_not_a_restart(tmp_path):
  ck = _saved(tmp_path, steps=(1, 2))
  for step in (1, 2):
    for path in _data_files(ck, step):
      open(path, "wb").write(b"")
  with pytest.raises(C.UnreadableCheckpointsError, match=r"none of the checkpoints \[1, 2\].*"
                     r"new --workdir"):
    _restore_into_fresh(C.TrainCheckpointer(ck.directory, keep=3))
  assert sorted(os.listdir(ck.directory)) == ["1", "2"]     # nothing moved or deleted
  assert not os.path.exists(ck.directory + "_corrupt")


def test_non_finite_state_is_never_saved(tmp_path):
  ck = _saved(tmp_path, steps=(1,))
  model, opt = _state(seed=2)
  model.b.bias.set_value(model.b.bias.get_value().at[1].set(jnp.nan))
  with pytest.raises(C.NonFiniteStateError, match=r"step 2 .*model/b/bias.*not saved.*"
                     r"checkpoints/1") as e:
    ck.save(2, model, opt)
  assert e.value.last_good.endswith(os.path.join("checkpoints", "1"))
  ck.wait()
  assert sorted(ck.manager.all_steps()) == [1]


def test_prng_key_arrays_are_digested_by_their_words():
  key = jax.random.key(3)
  digests, bad = C.state_digests({"rng": key, "x": jnp.ones(2)})
  assert not bad and set(digests) == {"rng", "x"}
  assert digests["rng"] == C.state_digests({"rng": jax.random.key_data(key)})[0]["rng"]
  assert digests["rng"] != C.state_digests({"rng": jax.random.key(4)})[0]["rng"]
