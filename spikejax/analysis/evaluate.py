"""Test accuracy of a trained classifier with and without test-time views.

The views are those of the training loop's evaluation (``config.eval_flip`` /
``config.eval_shift``, ``spikejax.train.tasks.classify.views_eval_step``): the mean of the
logits of each image, its mirror and the image moved by 1..k pixels along each axis. A finished
run can be scored here with more views than its evaluations used (each view is one more
forward pass)::

    python -m spikejax.analysis.evaluate --checkpoint WORKDIR --shift 1 --json
"""

from __future__ import annotations

from typing import Any, Iterable

import ml_collections


def evaluate_views(model, batches: Iterable[dict], *, flip: bool, shift: int) -> dict[str, Any]:
  """``accuracy``/``loss`` of the mean over the views and ``accuracy_single``/``loss_single``
  of the image alone, over ``batches`` (``image``, ``label``, ``mask``), and ``examples``."""
  import jax
  from spikejax.train import evaluators, sharding, tasks
  task = tasks.get_task("classify")
  cfg = ml_collections.ConfigDict({"eval_flip": bool(flip), "eval_shift": int(shift)})
  mesh = sharding.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}),  # one device
                            devices=jax.local_devices()[:1])
  res = evaluators.evaluate(model, evaluators.eval_step_for(task, cfg), list(batches), mesh,
                            task=task)
  out = {k: res[k] for k in ("accuracy", "loss", "examples")}
  out["accuracy_single"] = res.get("accuracy_single", res["accuracy"])
  out["loss_single"] = res.get("loss_single", res["loss"])
  return out


def main(argv=None) -> int:
  """``python -m spikejax.analysis.evaluate --checkpoint DIR [--shift K] [--json]``: test
  accuracy of the image alone, with its mirror, and with the mirror and the moves of 1..K
  pixels (``--shift 0``: no moved views), over the config's whole eval split by default."""
  import argparse
  import json
  from spikejax.analysis import cli
  p = argparse.ArgumentParser(prog="python -m spikejax.analysis.evaluate",
                              description=main.__doc__)
  cli.add_model_args(p)
  p.set_defaults(batches=None)
  p.add_argument("--shift", type=int, default=1, help="pixels of the largest move (0: none)")
  p.add_argument("--json", action="store_true")
  args = p.parse_args(argv)
  if args.shift < 0:
    p.error(f"--shift={args.shift}: must be >= 0 (0: no moved views)")
  model, config = cli.load(args)
  batches = list(cli.eval_batches(config, args))
  rows = {"mirror": evaluate_views(model, batches, flip=True, shift=0)}
  if args.shift:
    rows[f"mirror+shift{args.shift}"] = evaluate_views(model, batches, flip=True,
                                                       shift=args.shift)
  first = next(iter(rows.values()))
  report = {"examples": first["examples"],
            "single": {"accuracy": first["accuracy_single"], "loss": first["loss_single"]},
            **{k: {"accuracy": r["accuracy"], "loss": r["loss"]} for k, r in rows.items()}}
  views = {"single": 1, "mirror": 2, f"mirror+shift{args.shift}": 2 * (1 + 4 * args.shift)}
  print(f"{'views':24s} {'count':>5s} {'accuracy':>9s} {'loss':>8s}")
  for name in report:
    if name != "examples":
      print(f"{name:24s} {views[name]:5d} {report[name]['accuracy']:9.4f} "
            f"{report[name]['loss']:8.4f}")
  print(f"{report['examples']} examples")
  if args.json:
    print(json.dumps(report))
  return 0


if __name__ == "__main__":
  import sys
  sys.exit(main())
