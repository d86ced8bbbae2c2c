"""Tiny Fashion-MNIST models for the notebooks and quick looks.

``train_tiny(mode)`` trains a small E-SpikeFormer (SFA, T=1, D=4; or the vanilla binary LIF
baseline, T=4) on the real Fashion-MNIST images read straight from the Debian idx files, and
saves it as a model directory (``model.json``) that ``spikejax.train.checkpoints.load_trained``
and every analysis tool read. A finished directory is reused, not retrained.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from spikejax.data import fashion_mnist as fmnist

TINY_MODEL = dict(strides=(2, 2, 2, 1, 1), embed_dims=(16, 32, 32, 32))
# the neurons of the two modes (``spikejax.models.from_config.MODES`` adds the firing rule)
SPIKE = {"sfa": dict(spike_max=4, time_steps=1, rounding="half_up"),
         "vanilla": dict(time_steps=4)}
MODES = tuple(SPIKE)


def tiny_config(mode: str = "sfa", *, steps: int = 300, lr: float = 3e-3, seed: int = 0,
                model: dict[str, Any] | None = None):
  """The tiny run as a trainer config: ``espikeformer_t`` at 32 px on one channel (``TINY_MODEL``
  updated by ``model``), AdamW (weight decay 0.05 on every tensor, no clipping), 10 % linear
  warmup then cosine to ``lr / 100`` over ``steps``."""
  import ml_collections
  if mode not in SPIKE:
    raise ValueError(f"mode must be one of {sorted(SPIKE)}, got {mode!r}.")
  return ml_collections.ConfigDict(dict(
      seed=seed, task="classify", model_name="espikeformer_t",
      model={**TINY_MODEL, **(model or {})},
      mode=mode, spike=dict(SPIKE[mode]), channels=1, dtype="float32",
      optimizer=dict(name="adamw", lr=lr, weight_decay=0.05, b1=0.9, b2=0.999, eps=1e-8,
                     grad_clip_norm=0.0, layer_decay=1.0, decay_all=True),
      warmup_epochs=max(steps // 10, 1) / max(steps, 1), min_lr=lr * 0.01, ema_decay=0.0))


def fashion_mnist_arrays(split: str = "test", n: int | None = None,
                         source_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Normalised 32x32 NHWC float32 images (28 px zero-padded by 2) and int labels."""
  images, labels = fmnist.read_idx_arrays(source_dir, split)
  if n is not None:
    images, labels = images[:n], labels[:n]
  x = (images.astype(np.float32) / 255.0 - fmnist.MEAN) / fmnist.STD
  x = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=(0 - fmnist.MEAN) / fmnist.STD)
  return x, labels.astype(np.int32)


def train_tiny(mode: str = "sfa", directory: str | None = None, *, steps: int = 300,
               batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
               source_dir: str | None = None, model: dict[str, Any] | None = None) -> str:
  """Trains (or reuses) a tiny model; returns its model directory. ``mode``: sfa | vanilla;
  ``model``: create_model options over ``TINY_MODEL`` (e.g. ``{"block_depths": (1, 1)}``).

  A finished directory is reused only when it was trained with the same settings; otherwise
  this raises (naming the directory) rather than hand back a different model."""
  from spikejax.train.checkpoints import save_model
  from spikejax.train.state import build_train_state
  from spikejax.train.steps import SplitTrainer
  config = tiny_config(mode, steps=steps, lr=lr, seed=seed, model=model)
  directory = os.path.abspath(directory or os.path.join("workdirs", f"tiny_{mode}"))
  info_file = os.path.join(directory, "train_info.json")
  settings = {"mode": mode, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
              "model": json.loads(json.dumps(config.model.to_dict()))}
  if os.path.exists(info_file):
    with open(info_file) as f:
      saved = json.load(f)
    differ = sorted(k for k in settings if k in saved and saved[k] != settings[k])
    if differ:
      there = {k: saved[k] for k in differ}
      asked = {k: settings[k] for k in differ}
      raise ValueError(f"{directory} holds a tiny model trained with other settings "
                       f"({there} there, {asked} asked); pass another directory or delete "
                       f"this one to retrain.")
    return directory
  ts = build_train_state(config, None, num_classes=10, image_shape=(32, 32, 1),
                         total_steps=max(steps, 1), steps_per_epoch=max(steps, 1),
                         with_optimizer=steps > 0)   # steps=0: the freshly initialised model
  model = ts.model
  t0 = time.time()
  if steps:
    runner = SplitTrainer(model, ts.optimizer, step=ts.task.train_step)
    x, y = fashion_mnist_arrays("train", source_dir=source_dir)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
      idx = rng.integers(0, len(y), batch_size)
      yb = y[idx]
      runner.step({"image": jnp.asarray(x[idx]), "label": jnp.asarray(yb),
                   "target": jax.nn.one_hot(yb, 10)})
    runner.sync()
  seconds = time.time() - t0
  tmp = directory + ".partial"
  if os.path.exists(tmp):
    import shutil
    shutil.rmtree(tmp)
  save_model(tmp, model, model_name=config.model_name,
             model_kwargs={"num_classes": 10, **ts.model_kwargs})
  with open(os.path.join(tmp, "train_info.json"), "w") as f:
    json.dump({**settings, "seconds": round(seconds, 1)}, f, indent=2)
  os.makedirs(os.path.dirname(directory), exist_ok=True)
  os.replace(tmp, directory)
  return directory


def info(directory: str) -> dict[str, Any]:
  with open(os.path.join(directory, "train_info.json")) as f:
    return json.load(f)
