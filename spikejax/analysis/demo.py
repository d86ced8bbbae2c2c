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
import optax
from flax import nnx

from spikejax.data import fashion_mnist as fmnist

TINY_MODEL = dict(num_classes=10, in_channels=1, strides=(2, 2, 2, 1, 1),
                  embed_dims=(16, 32, 32, 32))
MODES = {
    "sfa": dict(firing="sfa", spike_max=4, time_steps=1, temporal="independent",
                rounding="half_up"),
    "vanilla": dict(firing="binary", temporal="lif_hard", time_steps=4, tau=2.0,
                    detach_reset=True),
}


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
               source_dir: str | None = None) -> str:
  """Trains (or reuses) a tiny model; returns its model directory. ``mode``: sfa | vanilla."""
  from spikejax.models import create_model
  from spikejax.train.checkpoints import save_model
  from spikejax.train.trainer import SplitTrainer
  if mode not in MODES:
    raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}.")
  directory = os.path.abspath(directory or os.path.join("workdirs", f"tiny_{mode}"))
  info_file = os.path.join(directory, "train_info.json")
  if os.path.exists(info_file):
    return directory
  kwargs = {**TINY_MODEL, **MODES[mode]}
  model = create_model("espikeformer_t", rngs=nnx.Rngs(seed), **kwargs)
  model.train()
  sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(steps // 10, 1), steps, lr * 0.01)
  opt = nnx.Optimizer(model, optax.adamw(sched, weight_decay=0.05), wrt=nnx.Param)
  runner = SplitTrainer(model, opt)
  x, y = fashion_mnist_arrays("train", source_dir=source_dir)
  rng = np.random.default_rng(seed)
  t0 = time.time()
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
  save_model(tmp, model, model_name="espikeformer_t", model_kwargs=kwargs)
  with open(os.path.join(tmp, "train_info.json"), "w") as f:
    json.dump({"mode": mode, "steps": steps, "batch_size": batch_size, "lr": lr,
               "seconds": round(seconds, 1)}, f, indent=2)
  os.makedirs(os.path.dirname(directory), exist_ok=True)
  os.replace(tmp, directory)
  return directory


def info(directory: str) -> dict[str, Any]:
  with open(os.path.join(directory, "train_info.json")) as f:
    return json.load(f)
