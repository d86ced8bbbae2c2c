"""Model checkpoints on disk: an orbax checkpoint of the model state plus ``model.json``.

``model.json`` records the registered model name and the ``create_model`` keyword arguments,
so ``load_model(dir)`` can rebuild the module before restoring its variables.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

MODEL_JSON = "model.json"
STATE_DIR = "state"


def _model_vars(model):
  return nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))


def save_model(directory: str, model, *, model_name: str, model_kwargs: dict[str, Any]) -> str:
  """Writes ``model``'s parameters and BN statistics to a new directory ``directory``."""
  directory = os.path.abspath(directory)
  if os.path.exists(directory) and os.listdir(directory):
    raise FileExistsError(f"{directory} exists and is not empty; choose a new --out directory "
                          f"(nothing was overwritten).")
  os.makedirs(directory, exist_ok=True)
  pure = nnx.to_pure_dict(_model_vars(model))
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, STATE_DIR), pure)
    ckptr.wait_until_finished()
  meta = {"model": model_name, "kwargs": _jsonable(model_kwargs)}
  with open(os.path.join(directory, MODEL_JSON), "w") as f:
    json.dump(meta, f, indent=2)
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
  path = os.path.join(directory, MODEL_JSON)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{directory} has no {MODEL_JSON}: it is not a spikejax model "
                            f"checkpoint (write one with `python -m spikejax.convert` or the "
                            f"trainer).")
  with open(path) as f:
    return json.load(f)


def restore_into(directory: str, model) -> None:
  """Restores the variables saved in ``directory`` into an already built ``model``."""
  state = _model_vars(model)
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(state))
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(os.path.join(os.path.abspath(directory), STATE_DIR), abstract)
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
