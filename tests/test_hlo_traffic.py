"""launch/hlo_traffic.py: bytes moved per top-level instruction of optimised HLO."""

import json

import pytest

from launch import hlo_traffic

# A hand-made optimised module: a convolution fusion (forward), an elementwise fusion
# (backward) inside a loop run 3 times, a VMEM-resident output (S(1)) and a tiled layout that
# pads 98 channels to 128.
HLO = """\
HloModule jit_step, entry_computation_layout={(bf16[2,4,4,98]{3,2,1,0})->f32[2,4,4,98]}

%fused_conv (p0: bf16[2,4,4,98], p1: bf16[3,3,98,98]) -> bf16[2,4,4,98] {
  %p0 = bf16[2,4,4,98]{3,2,1,0} parameter(0)
  %p1 = bf16[3,3,98,98]{3,2,1,0} parameter(1)
  ROOT %convolution.1 = bf16[2,4,4,98]{3,2,1,0} convolution(%p0, %p1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
}

%fused_add (p0: f32[2,4,4,98]) -> f32[2,4,4,98] {
  %p0 = f32[2,4,4,98]{3,2,1,0} parameter(0)
  ROOT %add.1 = f32[2,4,4,98]{3,2,1,0} add(%p0, %p0)
}

%body (arg: (s32[], f32[2,4,4,98])) -> (s32[], f32[2,4,4,98]) {
  %arg = (s32[], f32[2,4,4,98]) parameter(0)
  %gte.1 = f32[2,4,4,98]{3,2,1,0} get-tuple-element(%arg), index=1
  %gte.0 = s32[] get-tuple-element(%arg), index=0
  %fusion.2 = f32[2,4,4,98]{3,2,1,0} fusion(%gte.1), kind=kLoop, calls=%fused_add, metadata={op_name="jit(step)/transpose(jvp())/add"}
  ROOT %tuple.1 = (s32[], f32[2,4,4,98]) tuple(%gte.0, %fusion.2)
}

%cond (arg: (s32[], f32[2,4,4,98])) -> pred[] {
  %arg = (s32[], f32[2,4,4,98]) parameter(0)
  ROOT %c = pred[] constant(true)
}

ENTRY %main (x: bf16[2,4,4,98], w: bf16[3,3,98,98]) -> f32[2,4,4,98] {
  %x = bf16[2,4,4,98]{3,2,1,0:T(8,128)(2,1)} parameter(0)
  %w = bf16[3,3,98,98]{3,2,1,0} parameter(1)
  %fusion.1 = bf16[2,4,4,98]{3,2,1,0:T(8,128)(2,1)} fusion(%x, %w), kind=kOutput, calls=%fused_conv, metadata={op_name="jit(step)/jvp()/conv_general_dilated"}
  %convert.1 = f32[2,4,4,98]{3,2,1,0:S(1)} convert(%fusion.1)
  %zero = s32[] constant(0)
  %init = (s32[], f32[2,4,4,98]) tuple(%zero, %convert.1)
  %while.1 = (s32[], f32[2,4,4,98]) while(%init), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %out = f32[2,4,4,98]{3,2,1,0} get-tuple-element(%while.1), index=1
  %slice-start.1 = ((f32[2,4,4,98]{3,2,1,0}), f32[1,4,4,98]{3,2,1,0:S(1)}, s32[]{:S(2)}) slice-start(%out), slice={[0:1], [0:4], [0:4], [0:98]}
  %slice-done.1 = f32[1,4,4,98]{3,2,1,0:S(1)} slice-done(%slice-start.1)
  %i = s32[] constant(1)
  ROOT %dynamic-update-slice.1 = f32[2,4,4,98]{3,2,1,0} dynamic-update-slice(%out, %slice-done.1, %i, %zero, %zero, %zero)
}
"""
N = 2 * 4 * 4


def test_bytes_by_instruction_kind_and_phase():
  rows = {r["name"]: r for r in hlo_traffic.traffic(HLO)}
  assert set(rows) == {"fusion.1", "convert.1", "fusion.2", "slice-start.1",
                       "dynamic-update-slice.1"}
  # a DMA slice HBM -> VMEM reads the slice from HBM and writes it on chip
  dma = rows["slice-start.1"]
  assert dma["bytes"] == N // 2 * 98 * 4 and dma["bytes_all"] == 2 * dma["bytes"]
  # an in-place update reads the update (on chip) and writes it into the HBM buffer
  dus = rows["dynamic-update-slice.1"]
  assert dus["bytes"] == N // 2 * 98 * 4 and dus["bytes_all"] == 2 * dus["bytes"]
  conv = rows["fusion.1"]
  # input and output tiled (8, 128) on their two minor dims: (4, 98) stored as (8, 128); the
  # kernel is not tiled
  padded = 2 * 4 * 8 * 128
  assert conv["bytes"] == conv["bytes_all"] == 2 * (padded * 2) + 3 * 3 * 98 * 98 * 2
  assert conv["kind"] == "conv/dot fusion" and conv["phase"] == "forward"
  cvt = rows["convert.1"]   # reads HBM, writes VMEM (S(1)): only the read is HBM traffic
  assert cvt["bytes"] == padded * 2 and cvt["bytes_all"] == padded * 2 + N * 98 * 4
  add = rows["fusion.2"]   # loop body, 3 trips; reads and writes f32 in HBM
  assert add["bytes"] == 3 * 2 * N * 98 * 4
  assert add["kind"] == "elementwise fusion" and add["phase"] == "backward"
  rows = {k: r for k, r in rows.items() if k in ("fusion.1", "convert.1", "fusion.2")}
  s = hlo_traffic.summarise(list(rows.values()), top=2)
  assert s["hbm_bytes"] == sum(r["bytes"] for r in rows.values())
  assert s["by_kind"]["conv/dot fusion"]["bytes"] == conv["bytes"]
  assert s["by_phase"]["backward"]["bytes"] == add["bytes"]
  assert [r["name"] for r in s["top"]] == sorted(rows, key=lambda k: -rows[k]["bytes"])[:2]


def test_padded_dims():
  assert hlo_traffic._padded("32,112,112,98", "{3,0,2,1:T(8,128)(2,1)}") == [32, 112, 112, 128]
  assert hlo_traffic._padded("16,384", "{0,1:T(8,128)}") == [128, 384]
  assert hlo_traffic._padded("5", "{0:T(128)}") == [128]
  assert hlo_traffic._padded("5,7", "{1,0}") == [5, 7]


def test_command_line(tmp_path, capsys):
  f = tmp_path / "step.txt"
  f.write_text(HLO)
  assert hlo_traffic.main([str(f), "--json", "--top=1"]) == 0
  s = json.loads(capsys.readouterr().out)
  assert s["instructions"] == 5 and len(s["top"]) == 1 and s["top"][0]["name"] == "fusion.1"
  assert hlo_traffic.main([str(f)]) == 0
  assert "conv/dot fusion" in capsys.readouterr().out
  (tmp_path / "bad.txt").write_text("not hlo")
  assert hlo_traffic.main([str(tmp_path / "bad.txt")]) == 2
  assert "no ENTRY computation" in capsys.readouterr().err
  assert hlo_traffic.main([str(tmp_path / "missing.txt")]) == 2
