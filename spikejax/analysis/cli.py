"""Shared command-line plumbing of the analysis tools: a trained model and its eval data."""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any, Iterator


def add_model_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--checkpoint", required=True, help="a model directory (model.json) or a "
                 "training workdir (config.json + checkpoints/)")
  p.add_argument("--config", default=None, help="config file[:args] naming the data set "
                 "(default: the workdir's own config.json)")
  p.add_argument("--rounding", default=None, choices=("half_even", "half_up"),
                 help="override the model's SFA rounding")
  p.add_argument("--batches", type=int, default=10,
                 help="eval batches to use (default 10; the evaluate tool: all)")
  p.add_argument("--batch-size", type=int, default=None)


def load_config(spec: str):
  path, _, arg = spec.partition(":")
  s = importlib.util.spec_from_file_location("_analysis_config", path)
  if s is None:
    raise FileNotFoundError(f"config file {path!r} not found")
  mod = importlib.util.module_from_spec(s)
  s.loader.exec_module(mod)
  return mod.get_config(arg or None)


def load(args) -> tuple[Any, Any]:
  """``(model, config)`` from ``--checkpoint`` (and ``--config``, ``--rounding``)."""
  from spikejax.train.checkpoints import load_trained
  over = {} if args.rounding is None else {"rounding": args.rounding}
  model, config = load_trained(args.checkpoint, **over)
  if args.config:
    config = load_config(args.config)
  return model, config


def eval_batches(config, args, image_size: int | None = None) -> Iterator[dict]:
  """The config's eval split as batches (``image``, ``label``, ``mask``), at most ``--batches``
  (``None``: all)."""
  from spikejax import data as data_lib
  if config is None:
    raise ValueError("no data set: this checkpoint is a model directory without a config; "
                     "pass --config=configs/NAME.py to name the data set.")
  ds = data_lib.get_dataset(config.dataset, split=config.eval_split,
                            batch_size=args.batch_size or config.eval_batch_size,
                            data_dir=config.data_dir, train=False, seed=config.seed,
                            image_size=image_size or config.image_size,
                            channels=config.get("channels"),
                            frames=_plain(config.get("frames")),
                            # a segmentation set's eval options (resize, canvas) live here
                            augment=_plain(config.get("augment", "default")))
  for i, batch in enumerate(ds):
    if args.batches is not None and i >= args.batches:
      break
    yield batch


def _plain(value):
  """A ConfigDict (or None) as a plain dict for the data pipeline."""
  return value.to_dict() if hasattr(value, "to_dict") else value
