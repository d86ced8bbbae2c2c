"""The table of a Table V sweep (``configs/table5_fashion_mnist.py``): accuracy at equal epochs
and at equal training time, step time and memory, firing, SOPs, energy and parameters.

    python -m launch.sweep --config=configs/table5_fashion_mnist.py --workdir=workdirs/table5
    python -m launch.table5 --workdir=workdirs/table5 [--no-bench] [--energy-images 1000]

For every finished run (``summary.json``) under ``--workdir``:

- ``acc_equal_epochs``: test top-1 of the last evaluation (every row trains the same epochs on
  the same data order); ``best_acc`` the best evaluation.
- ``acc_equal_time``: test top-1 of the last evaluation at or before the training time of the
  fastest run's end (``train_min`` of the history rows: wall time less evaluation time).
- ``step_s``, ``xla_memory_mb``, ``params``: ``python -m spikejax.bench --train --json`` on the
  run's model, batch, input and neuron (median step; XLA's compiled-memory estimate).
- ``firing``, ``sops_m``, ``energy_mj``: ``python -m spikejax.analysis.energy --checkpoint RUN
  --json`` (the trained model run spike-driven on the first ``--energy-images`` test images;
  spec §7: E_MAC 4.6 pJ, E_AC 0.9 pJ).

Writes ``WORKDIR/table5.json`` and prints a markdown table. The measuring commands run one after
another, each in its own process (so their timings do not overlap).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from spikejax.train import paths

PAPER = {  # Table V (ImageNet, 224 px): top-1 %, energy mJ
    ("metaspikformer", "vanilla", 1): ("Meta-SpikeFormer 1x1", 68.5, 3.3),
    ("metaspikformer", "vanilla", 4): ("Meta-SpikeFormer 4x1", 71.3, 11.9),
    ("metaspikformer", "sfa", 1): ("+ SFA training 1x4", 77.8, 7.3),
    ("espikeformer", "sfa", 1): ("+ E-SpikeFormer 1x4", 78.5, 3.0),
}


def accuracy_key(row: dict) -> str:
  """The top-1 key of a history row (``test_accuracy``; EMA keys end in ``_ema``)."""
  keys = [k for k in row if k.endswith("_accuracy")]
  if not keys:
    raise ValueError(f"no accuracy in the evaluation row {row}")
  return "test_accuracy" if "test_accuracy" in keys else sorted(keys)[0]


def equal_time_accuracies(histories: dict[str, list[dict]]) -> tuple[float, dict[str, Any]]:
  """``(t, {run: accuracy})``: ``t`` is the smallest final ``train_min`` of the runs, and each
  run's accuracy is that of its last evaluation with ``train_min <= t`` (None if it has none)."""
  ends = {name: h[-1]["train_min"] for name, h in histories.items() if h}
  if not ends:
    raise ValueError("no run has an evaluation")
  t = min(ends.values())
  out = {}
  for name, h in histories.items():
    seen = [r for r in h if r["train_min"] <= t + 1e-9]
    out[name] = seen[-1][accuracy_key(seen[-1])] if seen else None
  return t, out


def _last_json(cmd: list[str]) -> dict:
  res = subprocess.run(cmd, capture_output=True, text=True)
  if res.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed ({res.returncode}):\n{res.stderr[-2000:]}")
  return json.loads(res.stdout.strip().splitlines()[-1])


def bench_command(config) -> list[str]:
  model = {k: list(v) if isinstance(v, (tuple, list)) else v
           for k, v in config["model"].items()}
  spike = config["spike"]
  return [sys.executable, "-m", "spikejax.bench", "--model", config["model_name"],
          "--resolution", str(config["image_size"]), "--batch", str(config["batch_size"]),
          "--num-classes", "10", "--in-channels", str(config["channels"]), "--train",
          "--mode", config["mode"], "--time-steps", str(spike["time_steps"]),
          "--spike-max", str(spike["spike_max"]), "--model-options", json.dumps(model),
          "--steps", "10", "--json"]


def energy_command(run_dir: str, images: int) -> list[str]:
  batch = min(images, 500)
  return [sys.executable, "-m", "spikejax.analysis.energy", "--checkpoint", run_dir,
          "--batches", str(max(1, images // batch)), "--batch-size", str(batch), "--json"]


def family(model_name: str) -> str:
  """The registered family of a model name (``metaspikformer``, ``espikeformer``, ...)."""
  from spikejax.models.registry import get_variant
  return get_variant(model_name).family


def rows_of(workdir: str) -> list[tuple[str, dict, dict]]:
  out = []
  for name in paths.listdir(workdir):
    run = paths.join(workdir, name)
    if paths.isfile(paths.join(run, "summary.json")):
      summary = json.loads(paths.read_text(paths.join(run, "summary.json")))
      config = json.loads(paths.read_text(paths.join(run, "config.json")))
      out.append((name, config, summary))
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m launch.table5")
  p.add_argument("--workdir", required=True, help="the sweep's workdir")
  p.add_argument("--no-bench", action="store_true", help="skip the step-time benchmark")
  p.add_argument("--energy-images", type=int, default=1000)
  args = p.parse_args(argv)
  if not paths.isdir(args.workdir):
    raise SystemExit(f"--workdir {args.workdir} does not exist; run the sweep first.")
  runs = rows_of(args.workdir)
  if not runs:
    raise SystemExit(f"no finished run (summary.json) under {args.workdir}")
  t_equal, at_t = equal_time_accuracies({n: s["history"] for n, _, s in runs})
  table = []
  for name, config, summary in runs:
    last = summary["history"][-1]
    key = (family(config["model_name"]), config["mode"], config["spike"]["time_steps"])
    paper = PAPER.get(key, (None, None, None))
    row = {"run": name, "paper_row": paper[0], "paper_top1": paper[1],
           "paper_energy_mj": paper[2], "model": config["model_name"], "mode": config["mode"],
           "time_steps": config["spike"]["time_steps"],
           "spike_max": config["spike"]["spike_max"] if config["mode"] == "sfa" else None,
           "epochs": last["epoch"], "train_min": last["train_min"],
           "acc_equal_epochs": last[accuracy_key(last)], "best_acc": summary["best_accuracy"],
           "acc_equal_time": at_t[name], "equal_time_min": t_equal}
    if not args.no_bench:
      b = _last_json(bench_command(config))
      row.update(params=b["params"], step_s=b["step_median_s"],
                 xla_memory_mb=round(b.get("xla_estimate_bytes", 0) / 2**20, 1),
                 bench_backend=b["backend"])
    e = _last_json(energy_command(paths.join(args.workdir, name), args.energy_images))
    row.update(firing=e["firing"]["mean_rate"], sops_m=e["sops"] / 1e6,
               energy_mj=e["snn_energy_mj"], energy_images=e["firing"]["images"])
    table.append(row)
    print(json.dumps(row), flush=True)
  paths.write_text(paths.join(args.workdir, "table5.json"), json.dumps(table, indent=2))
  print(markdown(table))
  return 0


def markdown(table: list[dict]) -> str:
  head = ("| row | T x D | top-1 equal epochs | top-1 at equal time | step s | XLA MB | "
          "firing | SOPs M | energy mJ | params | paper top-1 / mJ |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]

  def f(v, fmt):
    return "-" if v is None else format(v, fmt)
  for r in table:
    td = f"{r['time_steps']} x {r['spike_max'] or 1}"
    lines.append(
        f"| {r['paper_row'] or r['run']} | {td} | {f(r['acc_equal_epochs'], '.2%')} | "
        f"{f(r['acc_equal_time'], '.2%')} | {f(r.get('step_s'), '.4f')} | "
        f"{f(r.get('xla_memory_mb'), '.1f')} | {f(r['firing'], '.4f')} | "
        f"{f(r['sops_m'], '.2f')} | {f(r['energy_mj'], '.4f')} | {f(r.get('params'), ',')} | "
        f"{f(r['paper_top1'], '')} / {f(r['paper_energy_mj'], '')} |")
  return "\n".join(lines)


if __name__ == "__main__":
  sys.exit(main())
