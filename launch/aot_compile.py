"""Ahead-of-time compile of the real training step for a TPU slice, on a machine without one.

    python -m launch.aot_compile --config=configs/imagenet_mim.py:768 --topology=v5e:4x4 \\
        [--per_chip_batch=N] [--mesh_fsdp=K] [--ann_twin] [--hlo_out=F] [--json] \\
        [--config.KEY=VALUE ...]

Builds the trainer's model and optimizer of ``--config`` abstractly
(``spikejax.train.state.build_train_state(..., abstract=True)``: ``nnx.eval_shape``, no memory),
places their state with the trainer's sharding rules on a ``(data, fsdp)`` mesh made from the
topology's devices (``config.mesh``; ``--mesh_fsdp`` overrides ``mesh.fsdp``), and lowers and
compiles the task's jitted train step ``SplitTrainer`` runs (same function, donation of the
state, the task's batch spec sharded over every mesh axis) for a global batch of
``per_chip_batch x chips`` (default: ``config.batch_size``). Prints what XLA's memory analysis says one chip needs: arguments
(parameters, optimizer state, batch), outputs, aliased bytes (the donated state, counted once),
temporaries (activations), generated code, their total, whether it fits the chip's HBM
(with the trainer's EMA copy of the variables, when ``config.ema_decay`` is set; the eval step
is compiled separately and not counted), and what XLA's cost analysis of the executable says
one chip does per step: FLOPs, HBM bytes accessed, their ratio (arithmetic intensity) and the
roofline estimate of the step time and MFU on the chip (``GENERATIONS``: bf16 peak and HBM
bandwidth, cited). XLA's ``bytes accessed`` on TPU also counts arrays the compiler placed in
on-chip memory; the share in HBM (``launch/hlo_traffic.py`` over the optimised HLO) is printed
beside it with its own roofline. ``--ann_twin`` compiles the same step with every spiking neuron replaced by
ReLU (``firing='relu'``) beside it, the reference for what the neurons cost.
A step that does not fit fails to compile on TPU ("RESOURCE_EXHAUSTED: Ran out of memory on
HBM ..."); that is reported as not fitting, with the compiler's numbers.

Topologies: ``v5e:2x2``, ``v5e:4x4``, ``v5e:8x8``, ``v6e:4x4`` (2-D), ``v4:2x2x1``, ``v4:4x4x4``,
``v5p:2x2x1`` (3-D), as ``jax.experimental.topologies.get_topology_desc`` understands them;
they need ``libtpu`` (``pip install libtpu``, or the ``tpu-aot`` extra:
``pip install -e '.[tpu-aot]'``). ``cpu:N`` uses N host CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``, set here when jax is not imported
yet); it checks the step compiles, not that it fits anything.

Exit status: 0 compiled (and fits, where the chip's memory is known), 1 does not fit,
2 bad arguments or config.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import re
import sys
import tempfile
import time
from typing import Any

TOPOLOGY_EXAMPLES = ("v5e:2x2", "v5e:4x4", "v5e:8x8", "v6e:4x4", "v4:2x2x1", "v4:2x2x2",
                     "v4:4x4x4", "v5p:2x2x1", "cpu:8")

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Generation:
  hbm_gib: float        # per chip
  dims: int             # topology rank
  chip_config: str      # libtpu chip config: 'megacore' = one device per chip (2 TensorCores)
  peak_flops: float     # per chip, bf16 dense FLOP/s
  hbm_bandwidth: float  # per chip, bytes/s
  source: str           # where the two numbers are published

  @property
  def ridge(self) -> float:
    """FLOP per HBM byte above which a step is bound by compute, not memory traffic."""
    return self.peak_flops / self.hbm_bandwidth


# Per-chip peaks from Google Cloud's TPU system-architecture pages (key chip specifications:
# "peak compute per chip (bf16)" and "HBM capacity and bandwidth").
GENERATIONS = {
    "v4": Generation(32, 3, "megacore", 275e12, 1200e9,
                     "https://cloud.google.com/tpu/docs/v4"),
    "v5e": Generation(16, 2, "default", 197e12, 819e9,
                      "https://cloud.google.com/tpu/docs/v5e"),
    "v5p": Generation(95, 3, "megacore", 459e12, 2765e9,
                      "https://cloud.google.com/tpu/docs/v5p"),
    "v6e": Generation(32, 2, "default", 918e12, 1638e9,
                      "https://cloud.google.com/tpu/docs/v6e"),
}

# Training-split sizes where the data registry has none: they only set the learning-rate
# schedule baked into the step.


class AotError(ValueError):
  """Arguments that cannot be compiled; raised before anything compiles."""


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str            # as given
  platform: str        # 'tpu' | 'cpu'
  generation: str      # 'v5e', ... or 'cpu'
  dims: tuple[int, ...]

  @property
  def num_chips(self) -> int:
    return math.prod(self.dims)


def parse_topology(name: str) -> Topology:
  examples = ", ".join(TOPOLOGY_EXAMPLES)
  m = re.fullmatch(r"cpu:(\d+)", name)
  if m:
    if int(m.group(1)) < 1:
      raise AotError(f"cpu:N needs N >= 1, got {name!r}.")
    return Topology(name, "cpu", "cpu", (int(m.group(1)),))
  m = re.fullmatch(r"([a-z0-9]+):(\d+(?:x\d+)*)", name)
  if not m or m.group(1) not in GENERATIONS:
    raise AotError(f"unknown topology {name!r}: give GENERATION:SHAPE with GENERATION one of "
                   f"{sorted(GENERATIONS)} (or cpu:N), e.g. {examples}.")
  gen = GENERATIONS[m.group(1)]
  dims = tuple(int(d) for d in m.group(2).split("x"))
  if len(dims) != gen.dims or min(dims) < 1:
    raise AotError(f"topology {name!r}: {m.group(1)} slices have {gen.dims} dimensions "
                   f"(e.g. {examples}).")
  return Topology(name, "tpu", m.group(1), dims)


def _set_platform_env(topology: Topology) -> None:
  """Before jax is imported: host CPU devices for ``cpu:N``; never look for a local TPU."""
  if "jax" in sys.modules:
    return
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")  # no GCE metadata queries
  flags = os.environ.get("XLA_FLAGS", "")
  if topology.platform == "cpu" and "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count="
                               f"{topology.num_chips}").strip()


def have_libtpu() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def topology_devices(topology: Topology) -> list:
  import jax
  if topology.platform == "cpu":
    devices = jax.devices("cpu")
    if len(devices) < topology.num_chips:
      raise AotError(f"{topology.name} needs {topology.num_chips} CPU devices, this process has "
                     f"{len(devices)}: run with XLA_FLAGS=--xla_force_host_platform_device_count"
                     f"={topology.num_chips} (set before jax is imported).")
    return devices[:topology.num_chips]
  if not have_libtpu():
    raise AotError(f"compiling for {topology.name} needs libtpu (the TPU compiler): "
                   "`pip install libtpu`, or `pip install -e '.[tpu-aot]'` (the tpu-aot extra).")
  # compile-only use of libtpu: no TPU is opened, so other processes may load it too
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  # libtpu's INFO log says whether the compiler rematerialised to fit (read at its first load)
  os.environ.setdefault("TPU_STDERR_LOG_LEVEL", "0")
  os.environ.setdefault("TPU_MIN_LOG_LEVEL", "0")
  from jax.experimental import topologies
  dims3 = topology.dims + (1,) * (3 - len(topology.dims))
  host_bounds = tuple(min(b, d) for b, d in zip((2, 2, 1), dims3))  # 4 chips per TPU VM host
  try:
    with _compiler_log({}):  # libtpu's start-up log
      desc = topologies.get_topology_desc(
          platform="tpu", topology_name=topology.name,
          chip_config_name=GENERATIONS[topology.generation].chip_config,
          chips_per_host_bounds=host_bounds, num_slices=1, wrap=(False, False, False))
  except Exception as e:  # pylint: disable=broad-except  (libtpu's own message says why)
    raise AotError(f"libtpu does not know topology {topology.name!r}: {e}. Examples: "
                   f"{', '.join(TOPOLOGY_EXAMPLES)}.") from None
  devices = list(desc.devices)
  if len(devices) != topology.num_chips:
    raise AotError(f"{topology.name}: libtpu made {len(devices)} devices for "
                   f"{topology.num_chips} chips.")
  return devices


def load_config(spec: str):
  from launch import import_config_file
  try:
    mod, arg = import_config_file(spec, "aot_config")
  except FileNotFoundError as e:
    raise AotError(str(e)) from None
  return mod.get_config(arg)


def apply_overrides(config, overrides: list[str]):
  """``config`` with each ``--config.KEY=VALUE`` of ``overrides`` set (as ``spikejax.main``
  takes them); VALUE is a Python literal or else a string; KEY must exist in the config."""
  import ast
  config = config.copy_and_resolve_references()
  for item in overrides:
    key, eq, text = item[len("--config."):].partition("=")
    if not eq:
      raise AotError(f"{item}: give --config.KEY=VALUE.")
    *path, last = key.split(".")
    node = config
    for part in path:
      if part not in node:
        raise AotError(f"{item}: the config has no key {key!r}.")
      node = node[part]
    if last not in node:
      raise AotError(f"{item}: the config has no key {key!r}.")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    with config.unlocked():
      node[last] = tuple(value) if isinstance(value, list) else value
  return config


def _dataset_spec(name: str):
  """The data registry's spec of ``name`` (``spikejax.data.get_spec``)."""
  from spikejax.data import get_spec
  try:
    return get_spec(name)
  except ValueError as e:
    raise AotError(str(e)) from None


def data_spec(config) -> tuple[int, tuple[int, ...]]:
  """``(num_classes, image_shape)`` of the train batches, as the input pipeline makes them."""
  spec = _dataset_spec(config.dataset)
  if config.get("frames") is not None or spec.kind not in ("image", "segmentation"):
    raise AotError(f"dataset {config.dataset!r}: aot_compile knows the image and "
                   f"segmentation data sets (not event frames).")
  return spec.num_classes, tuple(spec.example_shape(config.image_size or None,
                                                    config.channels or None))


def train_examples(config) -> int:
  """Examples of the training split (they only set the schedule baked into the step)."""
  spec = _dataset_spec(config.dataset)
  return int(spec.splits.get(config.get("train_split", "train"),
                            spec.splits.get("train", config.batch_size)))


def abstract_batch(task, global_batch: int, num_classes: int, image_shape, sharding):
  """The task's train batch (``Task.batch_spec``: shapes and dtypes) with ``sharding``."""
  import jax
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                      task.batch_spec(global_batch, num_classes, tuple(image_shape)))


_SCALE = {"": 1, "K": 1024, "M": 1024 ** 2, "G": 1024 ** 3, "T": 1024 ** 4}


def _oom_numbers(msg: str) -> dict[str, Any]:
  """``used``/``capacity`` bytes from XLA:TPU's out-of-memory message ("... required for HLO
  temporaries (21.00G) exceeds available HBM (15.75G)", or "Used 20.5G of 15.75G hbm")."""
  m = (re.search(r"\(([\d.]+)([KMGT]?)\) exceeds available HBM \(([\d.]+)([KMGT]?)\)", msg)
       or re.search(r"Used ([\d.]+)([KMGT]?) of ([\d.]+)([KMGT]?) hbm", msg))
  if not m:
    return {}
  return {"used_bytes": int(float(m.group(1)) * _SCALE[m.group(2)]),
          "capacity_bytes": int(float(m.group(3)) * _SCALE[m.group(4)])}


def _remat_numbers(log: str) -> dict[str, int] | None:
  """What XLA:TPU's rematerialization pass did, from its log ("XLA::TPU rematerialization hbm
  reduction:  21.78G => 14.5G"): it recomputes activations in the backward pass when they do
  not fit the limit (95% of HBM less the arguments), at the cost of extra compute."""
  found = re.findall(r"rematerialization hbm reduction:\s+([\d.]+)([KMGT]?)B? => "
                     r"([\d.]+)([KMGT]?)B?", log)
  if not found:
    return None
  a, ua, b, ub = found[-1]
  out = {"before_bytes": int(float(a) * _SCALE[ua]), "after_bytes": int(float(b) * _SCALE[ub])}
  limit = re.findall(r"rematerialization limit ([\d.]+)([KMGT]?)B? =", log)
  if limit:
    out["limit_bytes"] = int(float(limit[-1][0]) * _SCALE[limit[-1][1]])
  return out


@contextlib.contextmanager
def _compiler_log(out: dict[str, str], enabled: bool = True):
  """Captures what the compiler writes to file descriptor 2 (libtpu's log, made verbose by
  ``TPU_MIN_LOG_LEVEL=0``) into ``out["text"]``; passes on its errors, not its INFO/WARNING
  records."""
  if not enabled:
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      out["text"] = tmp.read().decode(errors="replace")
      keep, rest = True, []
      for line in out["text"].splitlines(keepends=True):
        if re.match(r"[IWEF]\d{4} ", line):  # a new log record; others continue the last
          keep = line[0] in "EF"
        if keep:
          rest.append(line)
      sys.stderr.write("".join(rest))


def cost_numbers(compiled) -> dict[str, float] | None:
  """FLOPs and HBM bytes of one chip's program, from XLA's own cost analysis of the compiled
  executable (``compiled.cost_analysis()``: ``flops``, ``bytes accessed``)."""
  try:
    ca = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (a backend without cost analysis)
    return None
  if isinstance(ca, (list, tuple)):
    ca = ca[0] if ca else None
  if not ca or "flops" not in ca:
    return None
  flops, nbytes = float(ca["flops"]), float(ca.get("bytes accessed", 0.0))
  return {"flops": flops, "bytes_accessed": nbytes,
          "transcendentals": float(ca.get("transcendentals", 0.0)),
          "intensity": flops / nbytes if nbytes else None}


def roofline(cost: dict[str, float] | None, generation: str) -> dict[str, Any] | None:
  """The roofline estimate of one step on one chip of ``generation``: the time of its FLOPs at
  the chip's bf16 peak and of its HBM bytes at the chip's bandwidth; the step takes at least
  the larger (``bound``), and its MFU is at most compute time / step time."""
  gen = GENERATIONS.get(generation)
  if cost is None or gen is None:
    return None
  compute_s = cost["flops"] / gen.peak_flops
  memory_s = cost["bytes_accessed"] / gen.hbm_bandwidth
  step_s = max(compute_s, memory_s)
  out = {"peak_flops": gen.peak_flops, "hbm_bandwidth": gen.hbm_bandwidth,
         "ridge": round(gen.ridge, 1), "compute_s": compute_s, "memory_s": memory_s,
         "step_s": step_s, "bound": "compute" if compute_s >= memory_s else "memory",
         "mfu": compute_s / step_s if step_s else None, "source": gen.source}
  if cost.get("hbm_bytes"):
    # the same with only the traffic of arrays placed in HBM (launch/hlo_traffic.py)
    hbm_s = cost["hbm_bytes"] / gen.hbm_bandwidth
    out.update(memory_s_hbm=hbm_s, step_s_hbm=max(compute_s, hbm_s),
               bound_hbm="compute" if compute_s >= hbm_s else "memory",
               mfu_hbm=compute_s / max(compute_s, hbm_s) if compute_s else None)
  return out


def ann_twin_config(config):
  """``config`` with every spiking neuron replaced by ReLU (mode ``'ann'``): the same network,
  optimizer and step, the reference for what the spiking neurons cost."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.mode = "ann"
    if config.get("spike") is not None:
      config.spike.firing, config.spike.temporal = "relu", "independent"
  return config


def compile_step(config, topology: str | Topology, per_chip_batch: int | None = None,
                 mesh_fsdp: int | None = None, config_name: str = "",
                 ann_twin: bool = False, hlo_out: str | None = None) -> dict[str, Any]:
  """Compiles the trainer's train step of ``config`` for ``topology``; returns a report.

  With ``ann_twin`` the same step of the ANN twin (``ann_twin_config``) is compiled too and
  reported under ``"ann_twin"``, with the spiking step's FLOPs and bytes over the twin's."""
  report = _compile_one(config, topology, per_chip_batch, mesh_fsdp, config_name, hlo_out)
  if ann_twin:
    twin_hlo = None if not hlo_out else hlo_out.replace(".txt", "") + ".ann_twin.txt"
    twin = _compile_one(ann_twin_config(config), topology, per_chip_batch, mesh_fsdp,
                        config_name, twin_hlo)
    keep = ("params", "compile_s", "fits", "memory", "remat", "cost", "roofline", "error",
            "hlo")
    report["ann_twin"] = {k: twin[k] for k in keep if k in twin}
    a, b = report.get("cost"), twin.get("cost")
    if a and b:
      report["vs_ann"] = {"flops_ratio": a["flops"] / b["flops"],
                          "bytes_ratio": a["bytes_accessed"] / b["bytes_accessed"]}
      if a.get("hbm_bytes") and b.get("hbm_bytes"):
        report["vs_ann"]["hbm_bytes_ratio"] = a["hbm_bytes"] / b["hbm_bytes"]
  return report


def _compile_one(config, topology: str | Topology, per_chip_batch: int | None = None,
                 mesh_fsdp: int | None = None, config_name: str = "",
                 hlo_out: str | None = None) -> dict[str, Any]:
  topo = topology if isinstance(topology, Topology) else parse_topology(topology)
  if per_chip_batch is not None and per_chip_batch < 1:
    raise AotError(f"--per_chip_batch must be >= 1, got {per_chip_batch}.")
  if mesh_fsdp is not None and mesh_fsdp < 1:
    raise AotError(f"--mesh_fsdp must be >= 1, got {mesh_fsdp}.")
  _set_platform_env(topo)
  import jax
  from spikejax.models import count_params
  from spikejax.train import sharding as sharding_lib
  from spikejax.train import state as state_lib
  from spikejax.train import tasks as tasks_lib

  n = topo.num_chips
  devices = topology_devices(topo)
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if per_chip_batch is None:
      if config.batch_size % n:
        raise AotError(f"batch_size={config.batch_size} of the config is not divisible by the "
                       f"{n} chips of {topo.name}; give --per_chip_batch.")
      per_chip_batch = config.batch_size // n
    config.batch_size = per_chip_batch * n
    if mesh_fsdp is not None:
      if n % mesh_fsdp:
        raise AotError(f"--mesh_fsdp={mesh_fsdp} does not divide the {n} chips of {topo.name}.")
      config.mesh.fsdp, config.mesh.data = mesh_fsdp, -1
  state_lib.validate(config, n)  # the trainer's own checks (mesh, batch, model, task, optimizer)
  task = tasks_lib.from_config(config)
  num_classes, image_shape = data_spec(config)
  steps_per_epoch = max(1, train_examples(config) // config.batch_size)
  total_steps = state_lib.schedule_steps(config, steps_per_epoch)

  mesh = sharding_lib.make_mesh(config.mesh, n, devices=devices)
  t0 = time.perf_counter()
  ts = state_lib.build_train_state(config, mesh, num_classes=num_classes,
                                   image_shape=image_shape, total_steps=total_steps,
                                   steps_per_epoch=steps_per_epoch, abstract=True, task=task)
  step_args = task.abstract_step_args(config, mesh)
  batch = abstract_batch(task, config.batch_size, num_classes, image_shape,
                         sharding_lib.batch_sharding(mesh))
  lowered = task.train_step.lower(ts.graphdef, ts.state, batch, *step_args)
  t_lower = time.perf_counter() - t0
  model = ts.model
  ema = 0  # the trainer's EMA copy of the variables stays on the chips beside the step
  if ts.ema is not None:
    ema = sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
              for x in jax.tree.leaves(ts.ema))

  gen = GENERATIONS.get(topo.generation)
  hbm = int(gen.hbm_gib * GiB) if gen else None
  hosts = len({d.process_index for d in devices})
  report: dict[str, Any] = {
      "config": config_name, "model": config.model_name, "task": task.name,
      "params": count_params(model), "dtype": config.dtype,
      "topology": topo.name, "device_kind": devices[0].device_kind, "chips": n, "hosts": hosts,
      "mesh": {k: int(v) for k, v in mesh.shape.items()},
      "per_chip_batch": per_chip_batch, "global_batch": config.batch_size,
      "image_shape": list(image_shape), "hbm_bytes": hbm, "lower_s": round(t_lower, 1)}
  t1 = time.perf_counter()
  log: dict[str, str] = {}
  try:
    with _compiler_log(log, enabled=topo.platform == "tpu"):
      compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    msg = str(e)
    if "RESOURCE_EXHAUSTED" not in msg and "Ran out of memory" not in msg:
      raise
    report.update(compile_s=round(time.perf_counter() - t1, 1), fits=False,
                  error=msg.strip().splitlines()[0][:500], **_oom_numbers(msg),
                  remat=_remat_numbers(log.get("text", "")))
    return report
  report["compile_s"] = round(time.perf_counter() - t1, 1)
  report["remat"] = _remat_numbers(log.get("text", ""))
  ma = compiled.memory_analysis()
  mem = {"argument_bytes": ma.argument_size_in_bytes, "output_bytes": ma.output_size_in_bytes,
         "alias_bytes": ma.alias_size_in_bytes, "temp_bytes": ma.temp_size_in_bytes,
         "generated_code_bytes": ma.generated_code_size_in_bytes}
  # donated state: outputs that reuse argument buffers are counted once
  mem["total_bytes"] = (mem["argument_bytes"] + mem["output_bytes"] - mem["alias_bytes"]
                        + mem["temp_bytes"] + mem["generated_code_bytes"])
  mem["ema_bytes"] = ema
  peak = getattr(ma, "peak_memory_in_bytes", 0)
  if peak:
    mem["peak_bytes"] = peak
  report["memory"] = mem
  report["fits"] = None if hbm is None else mem["total_bytes"] + ema <= hbm
  report["cost"] = cost_numbers(compiled)
  hlo = compiled.as_text()
  if report["cost"] is not None and hlo:
    from launch import hlo_traffic
    try:
      split = hlo_traffic.summarise(hlo_traffic.traffic(hlo), top=0)
      report["cost"]["hbm_bytes"] = split["hbm_bytes"]
      report["cost"]["model_bytes"] = split["all_bytes"]
    except ValueError:  # not the HLO text this parser knows: the XLA numbers stand alone
      pass
  report["roofline"] = roofline(report["cost"], topo.generation)
  if hlo_out:
    with open(hlo_out, "w") as f:
      f.write(hlo)
    report["hlo"] = hlo_out
  return report


def _gib(b) -> str:
  return f"{b / GiB:7.2f} GiB" if b >= GiB / 100 or not b else f"{b / 2**20:7.2f} MiB"


def format_report(r: dict[str, Any]) -> str:
  lines = [
      f"{r['config'] or r['model']}: {r['model']} ({r['params'] / 1e6:.1f}M parameters, "
      f"{r['dtype']}), task {r['task']}",
      f"topology {r['topology']}: {r['chips']} chips ({r['device_kind']}, {r['hosts']} "
      f"host{'s' if r['hosts'] != 1 else ''}), mesh data={r['mesh']['data']} x "
      f"fsdp={r['mesh']['fsdp']}",
      f"batch {r['global_batch']} = {r['per_chip_batch']} per chip, images "
      f"{tuple(r['image_shape'])} float32",
      f"lowered in {r['lower_s']:.1f} s, compiled in {r['compile_s']:.1f} s"]
  hbm = f"{r['hbm_bytes'] / GiB:.0f} GiB" if r["hbm_bytes"] else None
  if "memory" not in r:
    used = (f": uses {r['used_bytes'] / GiB:.2f} GiB of {r['capacity_bytes'] / GiB:.2f} GiB"
            if "used_bytes" in r else "")
    lines.append(f"DOES NOT FIT the {hbm} chip{used} ({r['error']})")
    return "\n".join(lines)
  m = r["memory"]
  lines += ["per chip:",
            f"  arguments       {_gib(m['argument_bytes'])}  (parameters, optimizer state, batch)",
            f"  outputs         {_gib(m['output_bytes'])}",
            f"  aliased         {_gib(m['alias_bytes'])}  (donated state, counted once)",
            f"  temporaries     {_gib(m['temp_bytes'])}",
            f"  generated code  {_gib(m['generated_code_bytes'])}",
            f"  total           {_gib(m['total_bytes'])}"]
  if m.get("ema_bytes"):
    lines.append(f"  + EMA copy      {_gib(m['ema_bytes'])}  (config.ema_decay; outside the step)")
  if "peak_bytes" in m:
    lines.append(f"  (compiler peak  {_gib(m['peak_bytes'])})")
  if r.get("remat"):
    lines.append(f"the compiler rematerialised activations to fit: "
                 f"{r['remat']['before_bytes'] / GiB:.2f} GiB -> "
                 f"{r['remat']['after_bytes'] / GiB:.2f} GiB (more compute per step)")
  if hbm is None:
    lines.append("fits: unknown (no HBM size for this platform)")
  else:
    lines.append(f"fits in {hbm} HBM: {'yes' if r['fits'] else 'NO'}")
  lines += _cost_lines(r)
  twin = r.get("ann_twin")
  if twin:
    lines.append("ANN twin (every spiking neuron replaced by ReLU, same step):")
    if "memory" in twin:
      lines.append(f"  total           {_gib(twin['memory']['total_bytes'])}")
    lines += ["  " + x for x in _cost_lines(twin)]
    if r.get("vs_ann"):
      v = r["vs_ann"]
      lines.append(f"spiking / ANN twin: {v['flops_ratio']:.2f}x FLOPs, "
                   f"{v['bytes_ratio']:.2f}x bytes accessed"
                   + (f", {v['hbm_bytes_ratio']:.2f}x HBM-placed bytes"
                      if "hbm_bytes_ratio" in v else ""))
  return "\n".join(lines)


def _si(x: float, unit: str) -> str:
  """``x`` with the decimal prefix that leaves 1-999 before the point: 12.0 TFLOP, 139.2 GB."""
  for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
    if abs(x) >= scale:
      return f"{x / scale:.1f} {prefix}{unit}"
  return f"{x:.0f} {unit}"


def _cost_lines(r: dict[str, Any]) -> list[str]:
  c, rf = r.get("cost"), r.get("roofline")
  if not c:
    return ["cost analysis: not available from this compiler"]
  out = [f"per chip and step: {_si(c['flops'], 'FLOP')}, {_si(c['bytes_accessed'], 'B')} "
         f"accessed, {c['intensity'] or 0:.1f} FLOP per byte (XLA cost analysis)"]
  if rf:
    out.append(f"roofline ({rf['peak_flops'] / 1e12:.0f} TFLOP/s bf16, "
               f"{rf['hbm_bandwidth'] / 1e9:.0f} GB/s, ridge {rf['ridge']:.0f} FLOP/byte): "
               f"compute {rf['compute_s'] * 1e3:.1f} ms, memory {rf['memory_s'] * 1e3:.1f} ms "
               f"-> {rf['bound']}-bound, >= {rf['step_s'] * 1e3:.1f} ms per step, "
               f"MFU <= {rf['mfu'] * 100:.0f} %")
  if c.get("hbm_bytes") is not None:
    line = (f"of which in arrays placed in HBM: {_si(c['hbm_bytes'], 'B')} (the rest in on-chip "
            f"memory spaces; launch/hlo_traffic.py, whose model counts "
            f"{_si(c['model_bytes'], 'B')} in all)")
    out.append(line)
    if rf and "memory_s_hbm" in rf:
      out.append(f"roofline on HBM-placed traffic: memory {rf['memory_s_hbm'] * 1e3:.1f} ms -> "
                 f"{rf['bound_hbm']}-bound, >= {rf['step_s_hbm'] * 1e3:.1f} ms per step, "
                 f"MFU <= {rf['mfu_hbm'] * 100:.0f} %")
  return out


def parse(argv=None):
  p = argparse.ArgumentParser(prog="python -m launch.aot_compile", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="configs/NAME.py[:ARG]")
  p.add_argument("--topology", required=True,
                 help=f"TPU slice or cpu:N, e.g. {', '.join(TOPOLOGY_EXAMPLES)}")
  p.add_argument("--per_chip_batch", type=int, default=None,
                 help="examples per chip (default: config.batch_size / chips)")
  p.add_argument("--mesh_fsdp", type=int, default=None,
                 help="size of the fsdp mesh axis (default: config.mesh.fsdp); data = the rest")
  p.add_argument("--ann_twin", action="store_true",
                 help="also compile the ANN twin (spiking neurons -> ReLU) and compare")
  p.add_argument("--hlo_out", default=None,
                 help="write the compiled (optimised) HLO here, for python -m launch.hlo_traffic "
                      "(the twin's beside it, .ann_twin.txt)")
  p.add_argument("--json", action="store_true", help="print one JSON object")
  args, rest = p.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    p.error(f"unrecognized arguments: {' '.join(bad)}")
  args.overrides = rest   # --config.KEY=VALUE, e.g. --config.model.remat=dots
  return args


def main(argv=None) -> int:
  args = parse(argv)
  try:
    topo = parse_topology(args.topology)
    _set_platform_env(topo)
    from spikejax.models.from_config import ConfigError
    try:
      config = apply_overrides(load_config(args.config), args.overrides)
      report = compile_step(config, topo, args.per_chip_batch,
                            args.mesh_fsdp,
                            config_name=" ".join([args.config] + args.overrides),
                            ann_twin=args.ann_twin, hlo_out=args.hlo_out)
    except ConfigError as e:
      raise AotError(f"config error: {e}") from None
  except AotError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(report) if args.json else format_report(report), flush=True)
  return 1 if report["fits"] is False else 0


if __name__ == "__main__":
  sys.exit(main())
