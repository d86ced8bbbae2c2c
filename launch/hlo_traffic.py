"""Where a compiled step's memory traffic goes: a breakdown of optimised HLO by instruction.

    python -m launch.aot_compile --config=configs/imagenet_large.py:finetune --topology=v5e:2x2 \\
        --per_chip_batch=32 --hlo_out=/tmp/ft.txt
    python -m launch.hlo_traffic /tmp/ft.txt [--top=25] [--json]

Reads the optimised HLO text (``compiled.as_text()``) and, for every top-level instruction of
the entry computation and of the loops and calls it runs (not the insides of fusions, which
stay in registers and on-chip memory), counts the bytes it reads and writes: its operands'
and its outputs' array sizes, as stored (tiled layouts padded). Summed over every memory
space this is the model of XLA's cost analysis (``bytes accessed``, which ``aot_compile``
prints; the two agree within 1 % on the finetuning step, docs/scaling.md); the share in
arrays placed in HBM (memory space 0; a layout with ``S(n)``, n > 0, is on-chip memory) is
counted apart. It splits the traffic by kind of work (convolution and dot fusions, elementwise fusions, reductions,
collectives, copies and layout changes, DMA copies and slices between memory spaces), by
direction (the forward pass ``jvp``, the backward pass
``transpose``, the optimizer) and lists the largest instructions with the JAX op they came
from (``metadata op_name``), to see what a change to the model should shrink.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import re
import sys
from typing import Any

DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
               "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "f32": 4,
               "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
# one array shape with its optional layout: bf16[32,112,112,98]{3,0,2,1:T(8,128)(2,1)S(1)}
_ARRAY = re.compile(r"\b(" + "|".join(sorted(DTYPE_BYTES, key=len, reverse=True))
                    + r")\[([0-9,]*)\](\{[^}]*\})?")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$")
_COMP = re.compile(r"^(ENTRY\s+)?%([\w.\-]+)\s.*\{\s*$")
# opcodes that move no data of their own (or whose work is counted inside what they call)
NO_TRAFFIC = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while",
              "conditional", "call", "after-all", "partition-id", "replica-id", "iota",
              "copy-done", "slice-done", "all-gather-done", "all-reduce-done", "collective-permute-done",
              "async-done", "send-done", "recv-done", "opt-barrier"}
ASYNC_MOVES = ("copy-start", "slice-start")
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")


def array_bytes(shape_text: str, hbm_only: bool = True) -> float:
  """Bytes of every array in ``shape_text`` (one shape or a tuple); with ``hbm_only`` those
  whose layout names a memory space other than 0 (``S(1)``...) are not counted."""
  total = 0.0
  for dtype, dims, layout in _ARRAY.findall(shape_text):
    if hbm_only and layout and re.search(r"S\([1-9]\d*\)", layout):
      continue
    total += math.prod(_padded(dims, layout)) * DTYPE_BYTES[dtype]
  return total


def _padded(dims: str, layout: str) -> list[int]:
  """The dimensions as stored: a tiled layout ``{minor_to_major:T(a,b)...}`` rounds the two
  most minor dimensions up to multiples of the first tile (TPU pads, e.g. 98 channels to 128)."""
  shape = [int(d) for d in dims.split(",") if d]
  m = re.match(r"\{([0-9,]*):T\(([0-9,]+)\)", layout or "")
  if not m or not shape:
    return shape
  order = [int(d) for d in m.group(1).split(",") if d]
  tile = [int(t) for t in m.group(2).split(",")]
  for dim, t in zip(reversed(order[:len(tile)]), tile):  # tile dims: major ... minor
    shape[dim] = -(-shape[dim] // t) * t
  return shape


def _tuple_elements(shape: str) -> list[str]:
  """The top-level elements of a tuple shape ``'(a, (b), c)'``; ``[shape]`` for an array."""
  if not shape.startswith("("):
    return [shape]
  out, depth, start = [], 0, 1
  for i, ch in enumerate(shape):
    depth += ch in "({["
    depth -= ch in ")}]"
    if ch == "," and depth == 1:
      out.append(shape[start:i].strip())
      start = i + 1
  out.append(shape[start:-1].strip())
  return [re.sub(r"/\*index=\d+\*/", "", e).strip() for e in out]


def _async_move_bytes(ins: dict[str, Any], shapes: dict[str, str], hbm_only: bool) -> float:
  """An asynchronous copy or slice (a DMA, e.g. HBM -> VMEM prefetch) reads its destination's
  size from the source's memory space and writes it into the destination's."""
  elements = _tuple_elements(ins["shape"])
  if ins["op"] == "copy-start":      # (destination, source alias, context)
    dest = elements[0]
  else:                              # slice-start: ((source alias), destination, context)
    dest = elements[1] if len(elements) > 1 else elements[0]
  m = _ARRAY.search(dest)
  if not m:
    return 0.0
  src = _ARRAY.search(shapes.get(ins["operands"][0], "")) if ins["operands"] else None
  dims, layout = m.group(2), m.group(3) or ""
  read_layout = src.group(3) or "" if src else layout
  written = array_bytes(m.group(0), hbm_only)
  read = array_bytes(f"{m.group(1)}[{dims}]{read_layout}", hbm_only)
  return read + written


def _split_shape(rest: str) -> tuple[str, str]:
  """``'(a, b) fusion(...), ...'`` -> (``'(a, b)'``, ``'fusion(...), ...'``)."""
  if rest.startswith("("):
    depth = 0
    for i, ch in enumerate(rest):
      depth += ch == "("
      depth -= ch == ")"
      if depth == 0:
        return rest[:i + 1], rest[i + 1:].lstrip()
  shape, _, tail = rest.partition(" ")
  return shape, tail


def _operands(tail: str) -> tuple[str, list[str], str]:
  """``'fusion(%a, %b), kind=...'`` -> (``'fusion'``, [``'a'``, ``'b'``], ``'kind=...'``)."""
  op, _, rest = tail.partition("(")
  depth, i = 1, 0
  while i < len(rest) and depth:
    depth += rest[i] == "("
    depth -= rest[i] == ")"
    i += 1
  return op.strip(), re.findall(r"%([\w.\-]+)", rest[:i - 1]), rest[i:]


def parse(text: str) -> dict[str, list[dict[str, Any]]]:
  """Computation name -> its instructions (name, shape, opcode, operands, attributes);
  the entry computation is also under ``'__entry__'``."""
  comps: dict[str, list[dict[str, Any]]] = {}
  current = None
  for line in text.splitlines():
    m = _COMP.match(line)
    if m and not line.startswith(" "):
      current = comps.setdefault(m.group(2), [])
      if m.group(1):
        comps["__entry__"] = current
      continue
    if line.startswith("}"):
      current = None
      continue
    m = _INSTR.match(line)
    if m and current is not None:
      shape, tail = _split_shape(m.group(2))
      op, operands, attrs = _operands(tail)
      current.append({"name": m.group(1), "shape": shape, "op": op, "operands": operands,
                      "attrs": attrs})
  if "__entry__" not in comps:
    raise ValueError("no ENTRY computation: is this optimised HLO text (compiled.as_text())?")
  return comps


def _kind(ins: dict[str, Any], comps) -> str:
  op = ins["op"]
  if op in ASYNC_MOVES:
    return "dma (async copy/slice)"
  if op in ("convolution", "dot"):
    return "conv/dot"
  if op == "fusion":
    body = comps.get((re.search(r"calls=%([\w.\-]+)", ins["attrs"]) or [None, ""])[1], [])
    ops = {i["op"] for i in body}
    if ops & {"convolution", "dot"}:
      return "conv/dot fusion"
    if any(c in o for o in ops for c in COLLECTIVES):
      return "collective"
    if ops & {"reduce", "reduce-window", "select-and-scatter"}:
      return "reduce fusion"
    return "elementwise fusion"
  if any(op.startswith(c) for c in COLLECTIVES):
    return "collective"
  if op in ("copy", "copy-start", "transpose", "pad", "slice", "concatenate", "reshape",
            "dynamic-slice", "dynamic-update-slice"):
    return "copy/layout"
  return "other"


def _phase(ins: dict[str, Any]) -> str:
  m = re.search(r'op_name="([^"]*)"', ins["attrs"])
  name = m.group(1) if m else ""
  if "transpose(" in name:
    return "backward"
  if "jvp(" in name:
    return "forward"
  return "optimizer/other" if name else "unnamed"


def traffic(text: str) -> list[dict[str, Any]]:
  """One row per top-level instruction that moves data: ``bytes`` (operands + outputs in HBM),
  ``bytes_all`` (in any memory space: XLA's ``bytes accessed`` model), kind, phase, its JAX op
  name and output shape; loop bodies are weighted by their trip count."""
  comps = parse(text)
  shapes = {i["name"]: i["shape"] for body in comps.values() for i in body}
  rows: list[dict[str, Any]] = []

  def walk(body, weight, seen):
    for ins in body:
      called = re.findall(r"(?:body|to_apply|branch_computations=\{[^}]*|true_computation|"
                          r"false_computation)=?%([\w.\-]+)", ins["attrs"])
      if ins["op"] in ("while", "call", "conditional"):
        trips = 1
        if ins["op"] == "while":
          m = re.search(r'"known_trip_count":\{"n":"(\d+)"', ins["attrs"])
          trips = int(m.group(1)) if m else 1
        for name in called:
          if name in comps and name not in seen:
            walk(comps[name], weight * trips, seen | {name})
        continue
      if ins["op"] in NO_TRAFFIC:
        continue
      nbytes = {}
      for key, hbm in (("bytes", True), ("bytes_all", False)):
        if ins["op"] in ASYNC_MOVES:
          nbytes[key] = weight * _async_move_bytes(ins, shapes, hbm)
        elif ins["op"] == "dynamic-update-slice" and len(ins["operands"]) > 1:
          # in place: the update is read and written into the buffer, the rest is untouched
          update = shapes.get(ins["operands"][1], "")
          out = _ARRAY.search(ins["shape"])
          layout = out.group(3) or "" if out else ""
          u = _ARRAY.search(update)
          into = array_bytes(f"{u.group(1)}[{u.group(2)}]{layout}", hbm) if u else 0.0
          nbytes[key] = weight * (array_bytes(update, hbm) + into)
        else:
          operand_bytes = sum(array_bytes(shapes.get(o, ""), hbm) for o in ins["operands"])
          nbytes[key] = weight * (array_bytes(ins["shape"], hbm) + operand_bytes)
      if not nbytes["bytes_all"]:
        continue
      m = re.search(r'op_name="([^"]*)"', ins["attrs"])
      rows.append({"name": ins["name"], "op": ins["op"], "kind": _kind(ins, comps),
                   "phase": _phase(ins), **nbytes,
                   "shape": _ARRAY.sub(lambda a: f"{a.group(1)}[{a.group(2)}]", ins["shape"]),
                   "op_name": (m.group(1) if m else "")[-120:]})

  walk(comps["__entry__"], 1, frozenset())
  return rows


def summarise(rows: list[dict[str, Any]], top: int = 25) -> dict[str, Any]:
  """Totals (HBM and all memory spaces) by kind and by phase, and the ``top`` largest rows by
  HBM bytes."""
  def by(key):
    table: dict[str, dict[str, float]] = {}
    for r in rows:
      t = table.setdefault(r[key], {"bytes": 0.0, "bytes_all": 0.0})
      t["bytes"] += r["bytes"]
      t["bytes_all"] += r["bytes_all"]
    return dict(sorted(table.items(), key=lambda kv: -kv[1]["bytes_all"]))

  return {"hbm_bytes": sum(r["bytes"] for r in rows),
          "all_bytes": sum(r["bytes_all"] for r in rows), "instructions": len(rows),
          "by_kind": by("kind"), "by_phase": by("phase"),
          "top": sorted(rows, key=lambda r: -r["bytes"])[:top]}


def format_summary(s: dict[str, Any]) -> str:
  gb = lambda b: f"{b / 1e9:9.3f} GB"  # noqa: E731
  lines = [f"traffic of {s['instructions']} top-level instructions: {gb(s['all_bytes'])} in all "
           f"memory spaces (XLA's 'bytes accessed' model), {gb(s['hbm_bytes'])} of it in HBM"]
  for title, table in (("kind", s["by_kind"]), ("phase", s["by_phase"])):
    lines.append(f"  {'by ' + title:22s} {'all spaces':>12s} {'HBM':>12s}")
    lines += [f"  {k:22s} {gb(v['bytes_all'])} {gb(v['bytes'])}" for k, v in table.items()]
  lines.append(f"largest {len(s['top'])} in HBM:")
  for r in s["top"]:
    lines.append(f"  {gb(r['bytes'])}  {r['kind']:18s} {r['phase']:9s} {r['shape'][:60]:60s} "
                 f"{r['op_name'][-70:]}")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m launch.hlo_traffic", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("hlo", help="optimised HLO text (aot_compile --hlo_out)")
  p.add_argument("--top", type=int, default=25, help="how many of the largest to list")
  p.add_argument("--json", action="store_true", help="print one JSON object")
  args = p.parse_args(argv)
  try:
    with open(args.hlo) as f:
      text = f.read()
    s = summarise(traffic(text), args.top)
  except (OSError, ValueError) as e:
    print(f"hlo_traffic: {e}", file=sys.stderr)
    return 2
  print(json.dumps(s, indent=1) if args.json else format_summary(s))
  return 0


if __name__ == "__main__":
  sys.exit(main())
