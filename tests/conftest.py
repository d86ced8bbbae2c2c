"""Shared fixtures. Tests run on the CPU in float32; 8 fake devices for sharding tests."""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
