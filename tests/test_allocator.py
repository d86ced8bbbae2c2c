"""The entry points re-execute themselves with a fast host malloc (spikejax/allocator.py)."""

import json
import os
import subprocess
import sys

import pytest

from spikejax import allocator

TC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_plan_prefers_tcmalloc_and_keeps_existing_preloads():
  new = allocator.plan({"LD_PRELOAD": "/opt/libfoo.so", "PATH": "/bin"}, TC, (2, 36))
  assert new["LD_PRELOAD"] == f"{TC}:/opt/libfoo.so"
  assert new["PATH"] == "/bin" and new[allocator._DONE] == "1"
  assert int(new["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40
  assert allocator.in_effect(new) == "tcmalloc"


def test_plan_falls_back_to_glibc_huge_pages():
  new = allocator.plan({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, None, (2, 36))
  assert new["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert "LD_PRELOAD" not in new and allocator.in_effect(new) == "hugetlb"
  assert allocator.plan({}, None, (2, 31)) is None          # too old for the tunable: as is
  assert allocator.plan({}, None, None) is None             # not glibc (musl, macOS)
  new = allocator.plan({"SPIKEJAX_MALLOC": "hugetlb"}, TC, (2, 36))
  assert "LD_PRELOAD" not in new and allocator.in_effect(new) == "hugetlb"


@pytest.mark.parametrize("env", [
    {"SPIKEJAX_MALLOC": "system"},
    {allocator._DONE: "1"},                                  # never re-exec twice
    {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"},            # the user chose an allocator
    {"LD_PRELOAD": TC},
    {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
])
def test_plan_leaves_the_process_alone(env):
  assert allocator.plan(env, TC, (2, 36)) is None


def test_plan_errors_name_the_fix():
  with pytest.raises(ValueError, match="not one of .*'auto', 'tcmalloc', 'hugetlb', 'system'"):
    allocator.plan({"SPIKEJAX_MALLOC": "fast"}, TC, (2, 36))
  with pytest.raises(ValueError, match="apt-get install libtcmalloc-minimal4"):
    allocator.plan({"SPIKEJAX_MALLOC": "tcmalloc"}, None, (2, 36))
  with pytest.raises(ValueError, match="glibc >= 2.35"):
    allocator.plan({"SPIKEJAX_MALLOC": "hugetlb"}, None, (2, 31))


def _bench(**env):
  cmd = [sys.executable, "-m", "spikejax.bench", "--model", "espikeformer_t", "--resolution",
         "16", "--batch", "2", "--num-classes", "10", "--strides", "1,2,2,2,1", "--steps", "1",
         "--warmup", "0", "--json"]
  full = {k: v for k, v in os.environ.items()
          if k not in ("LD_PRELOAD", "SPIKEJAX_MALLOC", allocator._DONE)}
  full.update(env, JAX_PLATFORMS="cpu")
  return subprocess.run(cmd, cwd=REPO, env=full, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="re-exec is Linux only")
def test_bench_reexecs_with_the_fast_allocator():
  out = _bench()
  assert out.returncode == 0, out.stderr[-2000:]
  got = json.loads(out.stdout.strip().splitlines()[-1])["host_malloc"]
  if allocator.find_tcmalloc():
    assert got == "tcmalloc"
  elif (allocator.glibc_version() or (0, 0)) >= (2, 35):
    assert got == "hugetlb"
  else:
    assert got == "system"
  out = _bench(SPIKEJAX_MALLOC="system")
  assert out.returncode == 0, out.stderr[-2000:]
  assert json.loads(out.stdout.strip().splitlines()[-1])["host_malloc"] == "system"


def test_bad_choice_exits_before_any_work():
  out = _bench(SPIKEJAX_MALLOC="fast")
  assert out.returncode == 1 and "SPIKEJAX_MALLOC='fast' is not one of" in out.stderr
  assert "Traceback" not in out.stderr
