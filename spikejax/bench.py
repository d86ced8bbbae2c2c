"""Benchmark of the jitted inference or training step (images/s and peak memory).

    python -m spikejax.bench --model espikeformer_s --resolution 224 --batch 8 [--train] --json

The training step is the one the official reference times (``official_ref.py bench``):
cross-entropy, backward, AdamW (lr 1e-3) update, BN in train mode. The timing is the median
over ``--steps`` calls after compilation (each call waits for its result). Peak memory is the
device allocator's peak where the backend reports it (GPU/TPU), else XLA's compiled-memory
estimate (arguments + outputs + temporaries) and the process's peak RSS. ``host_malloc`` says
which host allocator the process ran with: run as a command it re-executes itself with tcmalloc
preloaded where it can (``spikejax.allocator``; ``SPIKEJAX_MALLOC=system`` turns that off).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

from spikejax import allocator


def _json_object(text: str) -> dict:
  try:
    value = json.loads(text)
  except json.JSONDecodeError as e:
    raise argparse.ArgumentTypeError(f"not JSON ({e}): {text!r}") from None
  if not isinstance(value, dict):
    raise argparse.ArgumentTypeError(f"expected a JSON object of model options, got {text!r}")
  return {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}


def _parse(argv):
  p = argparse.ArgumentParser(prog="python -m spikejax.bench", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="espikeformer_s")
  p.add_argument("--resolution", type=int, default=224)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--num-classes", type=int, default=1000)
  p.add_argument("--in-channels", type=int, default=3)
  p.add_argument("--train", action="store_true", help="time a training step (default: inference)")
  p.add_argument("--steps", type=int, default=10, help="timed calls after compilation")
  p.add_argument("--warmup", type=int, default=2, help="untimed calls after compilation")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                 help="compute dtype (parameters stay float32)")
  p.add_argument("--strides", default=None, help="comma-separated strides, e.g. 1,2,2,2,1")
  p.add_argument("--model-options", default=None, type=_json_object,
                 help='create_model keyword arguments as JSON, e.g. '
                      '\'{"embed_dims": [24, 48, 96, 128], "block_depths": [2, 1]}\'')
  p.add_argument("--mode", default="sfa", choices=["sfa", "vanilla"],
                 help="sfa: integer firing; vanilla: binary LIF spikes over T timesteps")
  p.add_argument("--time-steps", type=int, default=None, help="T (default: 1 for sfa, 4 vanilla)")
  p.add_argument("--spike-max", type=int, default=4, help="D for SFA")
  p.add_argument("--compare-modes", action="store_true",
                 help="time SFA (T=1, D=--spike-max) and vanilla (binary LIF, T=--time-steps or "
                      "4) on the same model, batch and input; report the ratios (paper Fig. 7)")
  p.add_argument("--json", action="store_true", help="print one JSON object")
  return p.parse_args(argv)


def bench_config(args):
  """The run as a trainer config: model, neuron mode (paper Fig. 7 / Table V: SFA, or binary
  LIF over T), dtype, and the official reference's optimizer (AdamW, constant lr 1e-3,
  optax's default weight decay 1e-4 on every tensor, no clipping)."""
  import ml_collections
  sfa = args.mode == "sfa"
  model = dict(args.model_options or {})
  if args.strides:
    model["strides"] = tuple(int(s) for s in args.strides.split(","))
  spike = (dict(spike_max=args.spike_max, time_steps=args.time_steps or 1) if sfa
           else dict(time_steps=args.time_steps or 4))
  return ml_collections.ConfigDict(dict(
      seed=0, task="classify", model_name=args.model, model=model, mode=args.mode,
      spike=spike, channels=args.in_channels, dtype=args.dtype,
      optimizer=dict(name="adamw", schedule="constant", lr=1e-3, weight_decay=1e-4, b1=0.9,
                     b2=0.999, eps=1e-8, grad_clip_norm=0.0, layer_decay=1.0, decay_all=True),
      warmup_epochs=0.0, min_lr=0.0, ema_decay=0.0))


def run(args) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from spikejax.models import count_params
  from spikejax.train.state import build_train_state
  from spikejax.train.steps import SplitTrainer

  config = bench_config(args)
  image_shape = (args.resolution, args.resolution, args.in_channels)
  ts = build_train_state(config, None, num_classes=args.num_classes, image_shape=image_shape,
                         total_steps=1, steps_per_epoch=1, with_optimizer=bool(args.train))
  model = ts.model
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(args.batch,) + image_shape), jnp.float32)
  y = jnp.asarray(rng.integers(0, args.num_classes, args.batch), jnp.int32)
  model.check_input(x)

  if args.train:
    runner = SplitTrainer(model, ts.optimizer, step=ts.task.train_step)
    batch = {"image": x, "label": y, "target": jax.nn.one_hot(y, args.num_classes)}
    call = lambda: runner.step(batch)
    step = ts.task.train_step
    lowered_args = None  # donated state: analysed below from fresh abstract shapes
  else:
    model.eval()
    graphdef, state = nnx.split(model)
    step = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    call = lambda: step(state, x)
    lowered_args = (state, x)

  t0 = time.perf_counter()
  jax.block_until_ready(call())
  compile_s = time.perf_counter() - t0
  for _ in range(args.warmup):
    jax.block_until_ready(call())
  times = []
  for _ in range(args.steps):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - t0)
  med = statistics.median(times)

  device = jax.devices()[0]
  mem = {}
  stats = device.memory_stats() if hasattr(device, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    mem["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
  try:
    if lowered_args is None:
      lowered_args = (runner.graphdef, runner.state, batch)
    ma = step.lower(*lowered_args).compile().memory_analysis()
    if ma is not None:
      mem["xla_estimate_bytes"] = int(ma.argument_size_in_bytes + ma.output_size_in_bytes +
                                      ma.temp_size_in_bytes - ma.alias_size_in_bytes)
      mem["xla_temp_bytes"] = int(ma.temp_size_in_bytes)
  except Exception:  # memory analysis is best effort on some backends
    pass
  mem["process_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return {
      "model": args.model, "model_options": config.model.to_dict(),
      "params": count_params(model), "resolution": args.resolution,
      "batch": args.batch, "train": bool(args.train), "mode": args.mode,
      "time_steps": config.spike.time_steps, "spike_max": args.spike_max if args.mode == "sfa"
      else None, "dtype": args.dtype, "backend": jax.default_backend(),
      "device": getattr(device, "device_kind", str(device)), "devices": jax.device_count(),
      "compile_s": round(compile_s, 3), "step_median_s": round(med, 5),
      "step_min_s": round(min(times), 5), "steps": args.steps,
      "images_per_s": round(args.batch / med, 2), **mem,
      "host_malloc": allocator.in_effect(),
  }


def compare_modes(args) -> dict:
  import copy
  sfa_args = copy.copy(args)
  sfa_args.mode, sfa_args.time_steps = "sfa", 1
  van_args = copy.copy(args)
  van_args.mode, van_args.time_steps = "vanilla", args.time_steps or 4
  sfa, van = run(sfa_args), run(van_args)
  out = {"sfa": sfa, "vanilla": van,
         "speedup_sfa_over_vanilla": round(van["step_median_s"] / sfa["step_median_s"], 3)}
  key = "device_peak_bytes" if "device_peak_bytes" in sfa else "xla_estimate_bytes"
  if key in sfa and key in van:
    out["memory_ratio_vanilla_over_sfa"] = round(van[key] / sfa[key], 3)
    out["memory_measure"] = key
  return out


def main(argv=None) -> int:
  args = _parse(argv)
  result = compare_modes(args) if args.compare_modes else run(args)
  if args.json:
    print(json.dumps(result))
  else:
    for k, v in result.items():
      print(f"{k:>24}: {v}")
  return 0


if __name__ == "__main__":
  allocator.reexec()
  sys.exit(main())
