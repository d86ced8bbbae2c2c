"""Runs a config's ``sweep(add)`` one run after another, each in its own workdir.

    python -m launch.sweep --config=configs/fashion_mnist.py[:ARG] --workdir=workdirs/sweep \
        [--dry_run] [--set key=value ...]

Each ``add(**overrides)`` call of the config's ``sweep`` becomes one run in
``WORKDIR/<index>_<overrides>``; runs already finished (``summary.json`` present) are reused, so
an interrupted sweep resumes. The config argument, the ``--set`` values and every run's
overrides are checked before the first run (also with ``--dry_run``). Prints a table of the
results at the end.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys

from launch import import_config_file
from spikejax.train import paths


def load_config_module(spec: str):
  try:
    mod, arg = import_config_file(spec, "sweep_config")
  except FileNotFoundError as e:
    raise SystemExit(str(e)) from None
  if not hasattr(mod, "sweep"):
    raise SystemExit(f"{spec.partition(':')[0]} defines no sweep(add) function")
  return mod, arg


def build_config(mod, arg, common: dict, overrides: dict):
  """The config of one run: ``get_config(arg)`` with the ``--set`` values, then the run's
  overrides. Raises ``SystemExit`` naming a bad config argument or override key."""
  try:
    config = mod.get_config(arg)
  except ValueError as e:
    raise SystemExit(f"config argument {arg!r}: {e}") from None
  apply_overrides(config, common)
  apply_overrides(config, overrides)
  return config


def collect(mod) -> list[dict]:
  runs: list[dict] = []
  mod.sweep(lambda **kw: runs.append(dict(kw)))
  return runs


def apply_overrides(config, overrides: dict) -> None:
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      if p not in node or not hasattr(node[p], "keys"):
        raise SystemExit(f"sweep override {key!r} is not a field of the config")
      node = node[p]
    if leaf not in node:
      raise SystemExit(f"sweep override {key!r} is not a field of the config")
    try:
      node[leaf] = value
    except TypeError as e:
      raise SystemExit(f"sweep override {key}={value!r}: {e}") from None


def run_name(i: int, overrides: dict) -> str:
  text = ",".join(f"{k}={v}" for k, v in overrides.items()) or "base"
  return f"{i:02d}_" + re.sub(r"[^A-Za-z0-9_.=,-]", "_", text)[:80]


def _parse_value(text: str):
  """JSON (``false``, ``0.4``, ``[1, 2]``) or a Python literal (``False``, ``(2, 1)``), else the
  string itself."""
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    pass
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m launch.sweep")
  p.add_argument("--config", required=True)
  p.add_argument("--workdir", required=True)
  p.add_argument("--dry_run", action="store_true", help="print the runs, do not train")
  p.add_argument("--set", action="append", default=[], help="key=value for every run")
  args = p.parse_args(argv)

  mod, arg = load_config_module(args.config)
  runs = collect(mod)
  for kv in args.set:
    if "=" not in kv:
      raise SystemExit(f"--set expects key=value, got {kv!r}")
  common = {k: _parse_value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
  configs = [build_config(mod, arg, common, over) for over in runs]  # fail before any run
  rows = []
  for i, over in enumerate(runs):
    name = run_name(i, over)
    workdir = paths.join(args.workdir, name)
    print(f"[{i + 1}/{len(runs)}] {name} -> {workdir}", flush=True)
    if args.dry_run:
      continue
    summary_path = paths.join(workdir, "summary.json")
    if paths.exists(summary_path):
      summary = json.loads(paths.read_text(summary_path))
    else:
      from spikejax.train import trainer
      summary = trainer.train_and_evaluate(configs[i], workdir)
    rows.append((name, summary.get("best_accuracy"), summary.get("step"),
                 summary.get("minutes")))
  if rows:
    width = max(len(r[0]) for r in rows)
    print(f"\n{'run':<{width}}  best_acc  steps  minutes")
    for name, acc, steps, minutes in rows:
      acc_s = "-" if acc is None else f"{acc:.4f}"
      print(f"{name:<{width}}  {acc_s:>8}  {steps:>5}  {minutes:>7}")
  return 0


if __name__ == "__main__":
  from spikejax import allocator
  allocator.reexec()
  sys.exit(main())
