"""Model checkpoints on disk: an orbax checkpoint of the model state plus ``model.json``.

``model.json`` records the registered model name and the ``create_model`` keyword arguments,
so ``load_model(dir)`` can rebuild the module before restoring its variables.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from spikejax.train import paths

log = logging.getLogger("spikejax")

MODEL_JSON = "model.json"
STATE_DIR = "state"


def _model_vars(model):
  return nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))


def save_model(directory: str, model, *, model_name: str, model_kwargs: dict[str, Any],
               extra: dict[str, Any] | None = None) -> str:
  """Writes ``model``'s parameters and BN statistics to a new directory ``directory``;
  ``model.json`` records how to rebuild it (``model_kwargs``) and ``extra`` facts about it
  (e.g. the converted file and its input resolution)."""
  directory = paths.resolve(directory)
  if paths.listdir(directory) or paths.isfile(directory):
    raise FileExistsError(f"{directory} exists and is not empty; choose a new --out directory "
                          f"(nothing was overwritten).")
  paths.makedirs(directory)
  pure = nnx.to_pure_dict(_model_vars(model))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(paths.join(directory, STATE_DIR), pure)
    ckptr.wait_until_finished()
  meta = {"model": model_name, "kwargs": _jsonable(model_kwargs), **_jsonable(extra or {})}
  paths.write_text(paths.join(directory, MODEL_JSON), json.dumps(meta, indent=2))
  return directory


def _jsonable(d):
  out = {}
  for k, v in d.items():
    if isinstance(v, tuple):
      v = list(v)
    if isinstance(v, np.generic):
      v = v.item()
    out[k] = v
  return out


def read_model_meta(directory: str) -> dict[str, Any]:
  path = paths.join(directory, MODEL_JSON)
  if not paths.exists(path):
    raise FileNotFoundError(f"{directory} has no {MODEL_JSON}: it is not a spikejax model "
                            f"checkpoint (write one with `python -m spikejax.convert` or the "
                            f"trainer).")
  return json.loads(paths.read_text(path))


def restore_into(directory: str, model) -> None:
  """Restores the variables saved in ``directory`` into an already built ``model``."""
  state = _model_vars(model)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(state))
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(paths.join(paths.resolve(directory), STATE_DIR), abstract)
  nnx.replace_by_pure_dict(state, restored)
  nnx.update(model, state)


def load_model(directory: str, **overrides):
  """Rebuilds the model recorded in ``directory`` and restores its variables."""
  from spikejax.models import create_model
  meta = read_model_meta(directory)
  kwargs = dict(meta.get("kwargs", {}))
  kwargs.update(overrides)
  model = create_model(meta["model"], rngs=nnx.Rngs(0), **kwargs)
  restore_into(directory, model)
  return model


# --------------------------------------------------------------------------- training checkpoints


def _flat(obj) -> dict[str, Any]:
  """An NNX object's variables as ``{"a/b/0/kernel": array}`` (string keys, orbax friendly)."""
  return {"/".join(str(p) for p in path): var.get_value()
          for path, var in nnx.to_flat_state(nnx.state(obj))}


def _own_buffers(tree):
  """Every array in its own device buffers.

  orbax can restore a replicated array onto CPU "devices" (one host memory) with several
  shards sharing one buffer. The jitted train step donates its state, so such a buffer would be
  freed while still in use (a crash, or silent corruption). Copying costs one pass over the
  state at restore time only.
  """
  return jax.tree.map(lambda x: copy_array(x) if isinstance(x, jax.Array) else x, tree)


DIGEST = "crc32"


class CorruptCheckpointError(ValueError):
  """A checkpoint whose arrays do not match the digests saved with them."""


class UnreadableCheckpointsError(RuntimeError):
  """No checkpoint of a workdir that has some can be restored."""


class NonFiniteStateError(FloatingPointError):
  """The state to save holds NaN or infinity; ``last_good`` names the newest checkpoint."""

  def __init__(self, message: str, *, step: int, arrays: list[str], last_good: str | None):
    super().__init__(message)
    self.step, self.arrays, self.last_good = step, arrays, last_good


def _whole(x) -> bool:
  """Whether this process holds all of ``x`` (one process, or replicated onto its devices)."""
  return isinstance(x, jax.Array) and (x.is_fully_addressable or x.is_fully_replicated)


def _named_leaves(tree):
  """``(name, leaf)`` pairs, names as ``_flat`` writes them (``"model/a/kernel"``)."""
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    yield "/".join(str(getattr(k, "key", k)) for k in path), x


def _not_whole(tree) -> set[str]:
  return {name for name, x in _named_leaves(tree) if isinstance(x, jax.Array) and not _whole(x)}


def state_digests(tree) -> tuple[dict[str, str], list[str]]:
  """``({"model/a/kernel": crc32 hex}, [names of non-finite float arrays])`` over the arrays
  this process holds whole (arrays sharded across hosts are skipped: no host sees them all).
  CRC32 catches any flipped bit of an array; ``zlib.crc32`` is about 1 GB/s on one core."""
  import zlib
  digests, bad = {}, []
  for name, x in _named_leaves(tree):
    if not (_whole(x) or isinstance(x, np.ndarray)):
      continue
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)                # a PRNG key (e.g. MIM's mask stream): its words
    if isinstance(x, np.ndarray) or x.is_fully_addressable:
      host = np.asarray(x)                      # all shards of this process, gathered
    else:
      host = np.asarray(x.addressable_data(0))  # replicated across processes: one copy
    host = np.ascontiguousarray(host).reshape(-1)
    if jnp.issubdtype(host.dtype, jnp.inexact) and not np.isfinite(host).all():
      bad.append(name)
    digests[name] = f"{zlib.crc32(host.view(np.uint8)):08x}"
  return digests, bad


def _save_copy(x):
  """A private copy of ``x`` to save. In one process a replicated array is copied onto one
  device: orbax otherwise writes it as one slice per replica (an eager slice op each), which
  made a save of the smoke test's 8-device state take 7.8 s instead of 2.5 s. Restores go onto
  the live shardings, so the saved sharding does not matter there. Across processes the
  replicas live on different hosts and orbax's own split is kept."""
  if not isinstance(x, jax.Array):
    return x
  if (jax.process_count() == 1 and len(x.sharding.device_set) > 1
      and x.sharding.is_fully_replicated):
    device = min(x.sharding.device_set, key=lambda d: d.id)
    return jax.device_put(x, jax.sharding.SingleDeviceSharding(device), may_alias=False)
  return copy_array(x)


def copy_array(x: jax.Array) -> jax.Array:
  """``x`` in new device buffers, same sharding; multi-process arrays shard by shard (only the
  addressable shards can be copied there)."""
  if x.is_fully_addressable:
    return jax.device_put(x, x.sharding, may_alias=False)
  shards = [jax.device_put(s.data, s.device, may_alias=False) for s in x.addressable_shards]
  return jax.make_array_from_single_device_arrays(x.shape, x.sharding, shards)


def _assign(obj, values: dict[str, Any]) -> None:
  state = nnx.state(obj)
  flat = nnx.to_flat_state(state)
  for path, var in flat:
    var.set_value(values["/".join(str(p) for p in path)])
  nnx.update(obj, nnx.from_flat_state(flat))


class TrainCheckpointer:
  """orbax ``CheckpointManager`` over model, optimizer and EMA state, keeping the last ``keep``.

  Saving is asynchronous; ``restore_latest`` restores onto the shardings the live model and
  optimizer already have (so a checkpoint restores onto any mesh) and falls back to the
  previous checkpoint when the latest is corrupt or incomplete, saying so.
  """

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True):
    self.directory = paths.resolve(directory)
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                        enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=opts,
                                         item_names=("state", "meta"))

  def _tree(self, model, optimizer, ema):
    tree = {"model": _flat(model), "optimizer": _flat(optimizer)}
    if ema is not None:
      tree["ema"] = dict(ema.params)
    return tree

  def save(self, step: int, model, optimizer, ema=None, *, best=None, force=False) -> None:
    """Saves asynchronously, with a CRC32 digest of every array this process holds whole.

    Raises ``NonFiniteStateError`` (nothing written) when a floating-point array holds a NaN
    or an infinity: a checkpoint is only ever a state worth resuming."""
    if step in self.manager.all_steps():
      return
    # Private copies: the save is asynchronous and the next train step donates (frees) the
    # live arrays; on CPU a host "transfer" can be a view of that device buffer.
    tree = jax.tree.map(_save_copy, self._tree(model, optimizer, ema))
    digests, bad = state_digests(tree)
    if bad:
      self.manager.wait_until_finished()
      raise NonFiniteStateError(
          f"the state at step {step} holds non-finite values ({len(bad)} arrays, e.g. "
          f"{bad[0]}); it was not saved. The last good checkpoint is "
          f"{self.latest_path() or 'none (no checkpoint was written yet)'}.", step=step,
          arrays=bad, last_good=self.latest_path())
    meta = {"step": int(step), "best": best, "digest": DIGEST, "digests": digests}
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(tree),
        meta=ocp.args.JsonSave(meta)), force=force)

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def latest_path(self) -> str | None:
    step = self.manager.latest_step()
    return None if step is None else paths.join(self.directory, str(step))

  def read_best(self):
    step = self.manager.latest_step()
    if step is None:
      return None
    try:
      meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      return meta["meta"].get("best")
    except Exception:  # a corrupt latest checkpoint is reported by restore_latest
      return None

  def _restore_checked(self, step: int, abstract=None) -> dict[str, Any]:
    """One checkpoint's state, its digests verified (``CorruptCheckpointError`` if not)."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    state, meta = restored["state"], restored["meta"] or {}
    saved = meta.get("digests")
    if saved is not None:   # checkpoints written before digests were added have none
      got, _ = state_digests(state)
      wrong = sorted(k for k in saved if k in got and got[k] != saved[k])
      missing = sorted(set(saved) - set(got) - _not_whole(state))
      if wrong or missing:
        raise CorruptCheckpointError(
            f"{len(wrong)} of {len(saved)} arrays do not match their saved digests "
            f"(e.g. {(wrong or missing)[0]})")
    return state

  def _readable(self, abstract=None) -> tuple[int, dict[str, Any], list[int]]:
    """The newest checkpoint that restores and verifies: ``(step, state, unreadable newer
    steps)``. Raises ``UnreadableCheckpointsError`` when none does (nothing is moved then)."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    bad = []
    for step in steps:
      try:
        return int(step), self._restore_checked(step, abstract), bad
      except Exception as e:  # corrupt or incomplete: say so, use the previous one
        log.warning("checkpoint %s/%d could not be restored (%s: %s); trying the previous one",
                    self.directory, step, type(e).__name__, str(e).splitlines()[0][:200])
        bad.append(int(step))
    raise UnreadableCheckpointsError(
        f"none of the checkpoints {sorted(steps)} in {self.directory} can be restored (corrupt "
        f"or incomplete; see the warnings above). Nothing was changed: to start afresh, use a "
        f"new --workdir (or move {self.directory} aside).")

  def _move_aside(self, steps: list[int]) -> None:
    """Moves unreadable step directories to ``<checkpoints>_corrupt/`` (kept, not deleted),
    so the rotation cannot keep them over good ones and their steps can be saved again."""
    if not steps:
      return
    if jax.process_index() == 0:
      aside = self.directory + "_corrupt"
      paths.makedirs(aside)
      for step in steps:
        src = paths.join(self.directory, str(step))
        if paths.exists(src):
          dst = paths.join(aside, f"{step}-{int(time.time())}")
          paths.move(src, dst)
          log.warning("moved the unreadable checkpoint %s to %s", src, dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("spikejax_move_aside_corrupt_checkpoints")
    self.manager.reload()

  def restore_arrays(self) -> tuple[int, dict[str, Any]]:
    """The newest readable checkpoint as saved (``{'model': {...}, 'optimizer': ...}``)."""
    if not self.manager.all_steps():
      raise FileNotFoundError(f"no training checkpoint in {self.directory}: train first, or "
                              f"pass a model directory written by `python -m spikejax.convert`.")
    step, restored, _ = self._readable()
    return step, restored

  def restore_latest(self, model, optimizer, ema=None) -> int:
    """Restores the newest readable checkpoint in place; returns its step (0 if there is no
    checkpoint). Newer unreadable ones are moved aside; when none is readable this raises
    ``UnreadableCheckpointsError`` rather than restart at step 0 over them."""
    if not self.manager.all_steps():
      return 0
    target = self._tree(model, optimizer, ema)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    step, restored, bad = self._readable(abstract)
    restored = _own_buffers(restored)
    self._move_aside(bad)
    _assign(model, restored["model"])
    _assign(optimizer, restored["optimizer"])
    if ema is not None and "ema" in restored:
      ema.params = dict(restored["ema"])
    log.info("resumed from %s/%d", self.directory, step)
    return int(step)


def read_model_values(path: str) -> dict[str, Any]:
  """The model variables stored at ``path`` as ``{"a/b/kernel": array}``: a training workdir
  (its newest readable checkpoint) or a model directory (``model.json``)."""
  path = paths.resolve(path)
  if paths.exists(paths.join(path, MODEL_JSON)):
    model = load_model(path)
    return {"/".join(str(p) for p in k): v.get_value()
            for k, v in nnx.to_flat_state(_model_vars(model))}
  ckpt_dir = paths.join(path, "checkpoints")
  if not paths.isdir(ckpt_dir):
    raise FileNotFoundError(
        f"{path} is neither a model directory (with {MODEL_JSON}) nor a training workdir (with "
        f"checkpoints/); pass the --workdir of a spikejax.main run.")
  _, restored = TrainCheckpointer(ckpt_dir, async_save=False).restore_arrays()
  return dict(restored["model"])


def transfer_weights(values: dict[str, Any], model) -> dict[str, list[str]]:
  """Loads every parameter and BN statistic of ``model`` found in ``values`` (same name),
  like PyTorch's ``load_state_dict(strict=False)``: MIM -> finetuning keeps the encoder and
  its BN statistics, drops the decoder, ``norm``, ``pos_embed``, ``mask_token``, and leaves
  the layer scales and heads at their fresh init (spec §4.2 "Weight transfer"). A model with a
  ``CHECKPOINT_PREFIX`` (a segmentation model's ``backbone/``) takes a classification model's
  values under that prefix: the backbone loads, its classifier is dropped, the neck, the head
  and the layer scales stay fresh (addendum B.3, trap 6).

  A name found with another shape is an error (PyTorch raises too, spec §8 trap 6); nothing
  is loaded then. Returns ``{"loaded", "fresh", "dropped"}`` name lists.
  """
  prefix = getattr(model, "CHECKPOINT_PREFIX", "")
  if prefix and not any(k.startswith(prefix) for k in values):
    # a classification model's values into a dense model's backbone (``SemanticFPN``)
    values = {prefix + k: v for k, v in values.items()}
  flat = nnx.to_flat_state(_model_vars(model))
  loaded, fresh, wrong = [], [], []
  for path, var in flat:
    key = "/".join(str(p) for p in path)
    if key not in values:
      fresh.append(key)
      continue
    if tuple(np.shape(values[key])) != tuple(var.get_value().shape):
      wrong.append(f"{key}: checkpoint {tuple(np.shape(values[key]))} vs model "
                   f"{tuple(var.get_value().shape)}")
      continue
    loaded.append(key)
  if wrong:
    hint = ""
    if any(k.startswith(("downsample1_1", "conv_block1_1", "downsample1_2")) for k in wrong):
      hint = (" The official spikmae_12_768 has first-stage width 192 but spikformer12_768 has "
              "196 (spec §8 trap 6): build the finetuning model with "
              "model.embed_dims=(192, 384, 768).")
    raise ValueError(f"{len(wrong)} arrays have other shapes than the model's, e.g. "
                     f"{'; '.join(wrong[:3])}. Nothing was loaded.{hint}")
  if not loaded:
    raise ValueError("no parameter of the model was found in the checkpoint (different model "
                     "family?); nothing was loaded.")
  for path, var in flat:
    key = "/".join(str(p) for p in path)
    if key in values:
      var.set_value(jax.numpy.asarray(values[key], dtype=var.get_value().dtype))
  nnx.update(model, nnx.from_flat_state(flat))
  model_keys = set(loaded) | set(fresh)
  dropped = [k for k in values if k not in model_keys]
  return {"loaded": loaded, "fresh": fresh, "dropped": dropped}


# the output layer's bias of each kind of model: its length is the number of classes
CLASS_BIASES = ("head/bias", "decode_head/conv_seg/bias", "mask_head/conv_logits/bias")


def _classifier_bias(values) -> str:
  """The key of the output layer's bias (its length is the number of classes): ``head/bias``
  of a classifier, ``decode_head/conv_seg/bias`` of a segmentation model,
  ``mask_head/conv_logits/bias`` of a Mask R-CNN (one mask per class)."""
  for key in CLASS_BIASES:
    if key in values:
      return key
  raise ValueError("the checkpoint has no classifier (head/bias), segmentation head "
                   "(decode_head/conv_seg/bias) nor mask head (mask_head/conv_logits/bias): it "
                   "is not a model load_trained can rebuild.")


def load_trained(path: str, *, use_ema: bool = False, **overrides):
  """A trained model from a model directory (``model.json``) or a training workdir.

  A workdir (``config.json`` + ``checkpoints/``) is rebuilt from its saved config and the
  newest readable training checkpoint (``use_ema``: its EMA weights, if it kept them).
  ``overrides`` replace model options (e.g. ``rounding='half_up'``). Returns
  ``(model, config)``; ``config`` is ``None`` for a model directory.
  """
  import ml_collections
  from spikejax.models import from_config
  path = paths.resolve(path)
  if paths.exists(paths.join(path, MODEL_JSON)):
    return load_model(path, **overrides), None
  cfg_file = paths.join(path, "config.json")
  ckpt_dir = paths.join(path, "checkpoints")
  if not (paths.exists(cfg_file) and paths.isdir(ckpt_dir)):
    raise FileNotFoundError(
        f"{path} is neither a model directory (with {MODEL_JSON}) nor a training workdir "
        f"(with config.json and checkpoints/); pass the --workdir of a spikejax.main run.")
  config = ml_collections.ConfigDict(json.loads(paths.read_text(cfg_file)))
  step, restored = TrainCheckpointer(ckpt_dir, async_save=False).restore_arrays()
  values = dict(restored["model"])
  if use_ema:
    if "ema" not in restored:
      raise ValueError(f"{ckpt_dir}/{step} has no EMA weights (config.ema_decay was 0).")
    values.update({k: v for k, v in restored["ema"].items() if k in values})
  num_classes = int(np.shape(values[_classifier_bias(values)])[0])
  model = from_config.create_from_config(config, num_classes=num_classes, rngs=nnx.Rngs(0),
                                         **overrides)
  _assign(model, {k: jax.numpy.asarray(v) for k, v in values.items()})
  return model, config
