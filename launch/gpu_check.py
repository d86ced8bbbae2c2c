"""The GPU check, prepared for a machine with one GPU: spikejax beside the official PyTorch code.

    python -m launch.gpu_check --out gpu_check.json \\
        [--torch-python PY --v3-mirror DIR --official-ref shared/tools/official_ref.py]

For ``espikeformer_m`` at 224 px (``--model``, ``--resolution``) it measures training and
inference throughput at the largest batch that fits (doubling from ``--min-batch`` to
``--max-batch``; each try in its own process, so an out-of-memory try leaves nothing behind):

* spikejax (``python -m spikejax.bench``): float32 and bfloat16, SFA (T = 1, D = 4) and vanilla
  direct training (binary LIF, T = 4);
* the official PyTorch model (when ``--torch-python`` has torch with CUDA and ``--v3-mirror``
  names a checkout of BICLab/Spike-Driven-Transformer-V3): float32 and bfloat16 autocast, its own
  SFA (D = 4), through ``official_ref.py``'s loader (the official code is read from the
  checkout at run time, never copied);

and writes one JSON: every try, the best batch of each row, the spikejax / official ratios
(same dtype, each at its own best batch) and the issue's bar (2,000 training images/s for
``espikeformer_m`` on an H200) and goal (4,000). ``--allow-cpu`` runs it without a GPU (tiny
settings, for the tests). Nothing here is timed by a test: the numbers come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

BAR, GOAL = 2000.0, 4000.0   # training images/s for espikeformer_m on one H200 (issue 18)
MODES = {"sfa": ["--mode", "sfa", "--time-steps", "1", "--spike-max", "4"],
         "vanilla": ["--mode", "vanilla", "--time-steps", "4"]}
OOM = ("RESOURCE_EXHAUSTED", "out of memory", "OutOfMemory", "Out of memory")

# The official side: one training and one inference timing on CUDA, run by --torch-python.
TORCH_BENCH = r"""
import importlib.util, json, sys, time
import torch
ref_path, size, res, batch, steps, dtype, classes = sys.argv[1:8]
res, batch, steps, classes = int(res), int(batch), int(steps), int(classes)
spec = importlib.util.spec_from_file_location("official_ref", ref_path)
ref = importlib.util.module_from_spec(spec); spec.loader.exec_module(ref)
assert torch.cuda.is_available(), "torch has no CUDA device"
model = ref.build(ref.load_official(), size, classes).cuda()
opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
x = torch.randn(batch, 3, res, res, device="cuda")
y = torch.randint(0, classes, (batch,), device="cuda")
amp = dict(device_type="cuda", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
def train():
    opt.zero_grad(set_to_none=True)
    with torch.autocast(**amp):
        loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward(); opt.step()
def timed(fn):
    ts = []
    for i in range(steps + 2):
        torch.cuda.synchronize(); t0 = time.perf_counter(); fn(); torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    ts = sorted(ts[2:]); return ts[len(ts) // 2]
model.train(); t = timed(train)
model.eval()
with torch.no_grad(), torch.autocast(**amp):
    i = timed(lambda: model(x))
print(json.dumps({"train_step_s": t, "train_images_per_s": batch / t, "infer_step_s": i,
                  "infer_images_per_s": batch / i,
                  "peak_memory_bytes": torch.cuda.max_memory_allocated(),
                  "device": torch.cuda.get_device_name(0), "torch": torch.__version__}))
"""


def _run(cmd: list[str], env=None, timeout: float = 1200) -> dict[str, Any]:
  """One try in its own process: its last JSON line, or why there is none (``oom``, ``error``)."""
  t0 = time.perf_counter()
  try:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
  except subprocess.TimeoutExpired:
    return {"ok": False, "error": f"timed out after {timeout:.0f} s"}
  text = p.stdout.strip().splitlines()
  if p.returncode == 0 and text:
    try:
      return {"ok": True, "wall_s": round(time.perf_counter() - t0, 1), **json.loads(text[-1])}
    except json.JSONDecodeError:
      pass
  err = (p.stderr or p.stdout).strip()
  if any(k in err for k in OOM):
    return {"ok": False, "oom": True}
  return {"ok": False, "error": err.splitlines()[-1][:300] if err else f"exit {p.returncode}"}


def _largest(try_batch, min_batch: int, max_batch: int) -> dict[str, Any]:
  """Doubles the batch until a try runs out of memory (or ``max_batch``); the best is the last
  batch that ran."""
  tries, best, batch = [], None, min_batch
  while batch <= max_batch:
    r = try_batch(batch)
    tries.append({"batch": batch, **r})
    if not r["ok"]:
      break
    best = {"batch": batch, **r}
    batch *= 2
  return {"best": best, "tries": tries}


def spikejax_rows(args) -> dict[str, Any]:
  rows = {}
  for dtype in args.dtypes:
    for mode in args.modes:
      def try_batch(batch, dtype=dtype, mode=mode):
        base = [sys.executable, "-m", "spikejax.bench", "--model", args.model,
                "--resolution", str(args.resolution), "--batch", str(batch), "--dtype", dtype,
                "--steps", str(args.steps), "--num-classes", str(args.num_classes), "--json",
                *MODES[mode]]
        train = _run(base + ["--train"])
        if not train["ok"]:
          return train
        infer = _run(base)
        return {"ok": True, "train_images_per_s": train["images_per_s"],
                "train_step_s": train["step_median_s"],
                "infer_images_per_s": infer.get("images_per_s"),
                "peak_memory_bytes": train.get("device_peak_bytes", train.get("xla_estimate_bytes")),
                "device": train.get("device"), "backend": train.get("backend")}
      rows[f"{dtype}/{mode}"] = _largest(try_batch, args.min_batch, args.max_batch)
  return rows


def official_rows(args) -> dict[str, Any]:
  missing = [n for n, v in (("--torch-python", args.torch_python), ("--v3-mirror", args.v3_mirror),
                            ("--official-ref", args.official_ref)) if not v]
  if missing:
    return {"not_run": f"the official side needs {', '.join(missing)}"}
  if not os.path.exists(args.official_ref):
    return {"not_run": f"--official-ref {args.official_ref} does not exist"}
  env = {**os.environ, "V3_MIRROR": args.v3_mirror}
  size = args.model.rsplit("_", 1)[-1]
  rows = {}
  for dtype in args.dtypes:
    def try_batch(batch, dtype=dtype):
      return _run([args.torch_python, "-c", TORCH_BENCH, args.official_ref, size,
                   str(args.resolution), str(batch), str(args.steps), dtype,
                   str(args.num_classes)], env=env)
    rows[f"{dtype}/sfa"] = _largest(try_batch, args.min_batch, args.max_batch)
  return rows


def summary(ours: dict[str, Any], official: dict[str, Any], model: str) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for key, row in ours.items():
    best = row["best"]
    if not best:
      continue
    line = {"batch": best["batch"], "train_images_per_s": best["train_images_per_s"],
            "infer_images_per_s": best["infer_images_per_s"]}
    ref = official.get(key, {}).get("best") if isinstance(official.get(key), dict) else None
    if ref:
      line["vs_official_train"] = round(best["train_images_per_s"] / ref["train_images_per_s"], 3)
      line["vs_official_infer"] = round(best["infer_images_per_s"] / ref["infer_images_per_s"], 3)
    out[key] = line
  trains = [v["train_images_per_s"] for k, v in out.items() if k.endswith("/sfa")]
  if trains and model == "espikeformer_m":
    top = max(trains)
    out["best_sfa_train_images_per_s"] = top
    out["bar_2000"] = top >= BAR
    out["goal_4000"] = top >= GOAL
  return out


def parse(argv=None):
  p = argparse.ArgumentParser(prog="python -m launch.gpu_check", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="the JSON file to write (never overwritten)")
  p.add_argument("--model", default="espikeformer_m")
  p.add_argument("--resolution", type=int, default=224)
  p.add_argument("--num-classes", type=int, default=1000)
  p.add_argument("--min-batch", type=int, default=32)
  p.add_argument("--max-batch", type=int, default=2048)
  p.add_argument("--steps", type=int, default=10, help="timed steps per try (median)")
  p.add_argument("--dtypes", nargs="+", default=["bfloat16", "float32"],
                 choices=["bfloat16", "float32"])
  p.add_argument("--modes", nargs="+", default=["sfa", "vanilla"], choices=sorted(MODES))
  p.add_argument("--torch-python", default=None, help="a python with torch (CUDA) and einops")
  p.add_argument("--v3-mirror", default=None,
                 help="a checkout (or git directory) of BICLab/Spike-Driven-Transformer-V3")
  p.add_argument("--official-ref", default=None, help="the path of official_ref.py")
  p.add_argument("--allow-cpu", action="store_true", help="run without a GPU (tests)")
  return p.parse_args(argv)


def main(argv=None) -> int:
  args = parse(argv)
  if os.path.exists(args.out):
    print(f"gpu_check: {args.out} exists; it is never overwritten: give another --out.",
          file=sys.stderr)
    return 2
  if args.min_batch < 1 or args.max_batch < args.min_batch:
    print(f"gpu_check: need 1 <= --min-batch <= --max-batch, got {args.min_batch}, "
          f"{args.max_batch}.", file=sys.stderr)
    return 2
  import jax
  backend = jax.default_backend()
  if backend != "gpu" and not args.allow_cpu:
    print(f"gpu_check: JAX sees no GPU (backend {backend!r}); run it on a GPU machine "
          f"(pip install 'jax[cuda12]'), or pass --allow-cpu for a dry run.", file=sys.stderr)
    return 2
  t0 = time.perf_counter()
  ours = spikejax_rows(args)
  official = official_rows(args)
  result = {"model": args.model, "resolution": args.resolution, "backend": backend,
            "device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
            "spikejax": ours, "official": official,
            "summary": summary(ours, official, args.model),
            "wall_s": round(time.perf_counter() - t0, 1)}
  with open(args.out, "x") as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result["summary"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
