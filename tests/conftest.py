"""Shared fixtures. Tests run on the CPU in float32; 8 fake devices for sharding tests."""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import gc
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN_DIR = pathlib.Path(os.environ.get("SPIKEJAX_GOLDEN", REPO.parent / "shared" / "golden"))


def golden_files():
  if not GOLDEN_DIR.is_dir():
    return []
  return sorted(GOLDEN_DIR.glob("*.npz"))


@pytest.fixture(scope="session")
def golden_dir():
  if not GOLDEN_DIR.is_dir():
    if os.environ.get("CI"):
      pytest.fail(f"golden reference directory {GOLDEN_DIR} is absent in CI")
    pytest.skip(f"golden reference directory {GOLDEN_DIR} is absent (set SPIKEJAX_GOLDEN); "
                "parity tests need ../shared/golden")
  return GOLDEN_DIR


def load_golden(path):
  with np.load(path) as z:
    return {k: z[k] for k in z.files}


def _memory_mappings() -> int:
  try:
    with open("/proc/self/maps") as f:
      return sum(1 for _ in f)
  except OSError:  # not Linux
    return 0


def _max_mappings() -> int:
  try:
    with open("/proc/sys/vm/max_map_count") as f:
      return int(f.read())
  except (OSError, ValueError):
    return 0


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
  """Drops JAX's compiled programs after each test module.

  Every cached XLA:CPU executable holds about 30 memory mappings; the whole suite in one process
  reached Linux's ``vm.max_map_count`` (65,530) and XLA then crashed inside a compile (SIGSEGV
  or SIGABRT in test_train, found from the core dump's 65,531 segments). Clearing the caches
  unmaps them; a module that alone comes near the limit fails here with a clear message.
  """
  yield
  import jax
  used, limit = _memory_mappings(), _max_mappings()
  jax.clear_caches()
  gc.collect()
  if limit and used > 0.8 * limit:
    pytest.fail(f"this test module left {used} memory mappings (vm.max_map_count = {limit}): "
                f"too many compiled programs are alive at once; reuse jitted functions.")
