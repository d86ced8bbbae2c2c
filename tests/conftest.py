"""Shared fixtures. Tests run on the CPU in float32; 8 fake devices for sharding tests."""

import os

# The suite runs with the host malloc the entry points use (spikejax/allocator.py): pytest
# re-executes itself once with tcmalloc preloaded, and the xdist workers and the subprocesses
# the tests start inherit it. XLA:CPU's compiler and its per-step temporaries allocate heavily;
# test_tasks.py took 106 s against 114 s without it (one process, cold compile cache).
# SPIKEJAX_MALLOC=system runs the tests with the system allocator. See pytest_configure.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# A persistent compilation cache shared by the test modules, the xdist workers and the
# subprocesses the tests start (environment variables reach them): each module drops its
# compiled programs (below), and building a model compiles one random initializer per
# parameter shape (about 0.3 s each on XLA:CPU, 31 s for espikeformer_t), so without the cache
# every module paid that again. Keys are content hashes: a stale entry cannot be used.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(__import__("pathlib").Path(__file__).resolve().parents[1]
                          / ".pytest_cache" / "jax-compile"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
# Decoded data-set arrays (spikejax.data.sources.cache_dir) likewise, not in the user's home.
os.environ.setdefault("SPIKEJAX_CACHE_DIR",
                      str(__import__("pathlib").Path(__file__).resolve().parents[1]
                          / ".pytest_cache" / "spikejax"))
# Tiny test models spend most of their time in XLA's compiler, not in running: with most of its
# optimizations off (LLVM -O0, no expensive passes) test_tasks.py's padding test took 25.0 s
# against 61.9 s (cold cache, one process). The programs compute the same thing; the parity
# tests against the official code turn the optimizations back on (``production_compiler``)
# so that they hold for the compiler users run. Set JAX_DISABLE_MOST_OPTIMIZATIONS=0 to test
# everything with the full compiler.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import contextlib
import gc
import pathlib

import numpy as np
import pytest

# With most optimizations off, XLA:CPU also emits its fused loops with its older elemental
# emitters, which compile faster: ``sharded_step.run(8, 1, steps=1)`` took 35.7 s against
# 42.2 s (cold, no compile cache, tcmalloc). Set through XLA_FLAGS, so the subprocesses the tests
# start (the main job, bench, notebook kernels, multi-process runs) get it too; tests that write
# their own XLA_FLAGS add ``SPIKEJAX_TEST_COMPILE_FLAGS``. ``production_compiler`` gives every
# compilation inside it XLA's defaults again (``_default_emitters_with_full_optimizations``).
FAST_COMPILE_FLAGS = "--xla_cpu_use_fusion_emitters=false"


def _default_emitters_with_full_optimizations() -> bool:
  """Per compilation, through JAX's compile options (which override XLA_FLAGS): fusion
  emitters whenever ``jax_disable_most_optimizations`` is off. False if JAX's private
  ``get_compile_options`` is gone (then the flag is not set at all)."""
  from jax._src import compiler
  original = getattr(compiler, "get_compile_options", None)
  if original is None:
    return False
  if getattr(original, "_spikejax_tests", False):
    return True

  def get_compile_options(*args, env_options_overrides=None, **kwargs):
    import jax
    if not jax.config.values["jax_disable_most_optimizations"]:
      env_options_overrides = {"xla_cpu_use_fusion_emitters": True,
                               **(env_options_overrides or {})}
    return original(*args, env_options_overrides=env_options_overrides, **kwargs)

  get_compile_options._spikejax_tests = True
  compiler.get_compile_options = get_compile_options
  return True


if (os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] not in ("0", "false", "False")
    and _default_emitters_with_full_optimizations()):   # no backend is started yet
  os.environ.setdefault("SPIKEJAX_TEST_COMPILE_FLAGS", FAST_COMPILE_FLAGS)
  if FAST_COMPILE_FLAGS not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " " + FAST_COMPILE_FLAGS

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN_DIR = pathlib.Path(os.environ.get("SPIKEJAX_GOLDEN", REPO.parent / "shared" / "golden"))


# meta/model of the golden files -> the family whose parity test reads them
GOLDEN_FAMILIES = {"Efficient_Spiking_Transformer": "espikeformer",
                   "Spiking_vit_MetaFormer": "metaspikformer"}


def golden_family(path) -> str:
  """The model family of a golden file (from its ``meta/model``), e.g. ``espikeformer``."""
  with np.load(path) as z:
    official = str(z["meta/model"])
  for prefix, family in GOLDEN_FAMILIES.items():
    if official.startswith(prefix):
      return family
  raise ValueError(f"{path}: golden file of an unknown official model {official!r}; "
                   f"add it to GOLDEN_FAMILIES in tests/conftest.py")


def golden_files(family: str | None = None):
  """The golden ``.npz`` files, all of them or those of one model family."""
  if not GOLDEN_DIR.is_dir():
    return []
  files = sorted(GOLDEN_DIR.glob("*.npz"))
  return files if family is None else [f for f in files if golden_family(f) == family]


def pytest_configure(config):
  """Re-executes pytest with the fast host malloc (see the top of this file), once, before any
  test or worker starts. pytest has already redirected stdout and stderr to its capture files
  by now; they are given back first, so the new process writes to the terminal."""
  from spikejax import allocator
  if allocator.plan(os.environ, allocator.find_tcmalloc(), allocator.glibc_version()) is None:
    return
  capture = config.pluginmanager.getplugin("capturemanager")
  if capture is not None:
    capture.stop_global_capturing()
  allocator.reexec()


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


@contextlib.contextmanager
def production_compiler():
  """Compiles the programs jitted inside with all of XLA's optimizations, as users run them.

  The float32 golden parity of the jitted passes is asserted for the production compiler; the
  rest of the suite, the float64 passes and the op-by-op train pass (one primitive a program,
  nothing to fuse) run with most optimizations off (see the top of this file) to save compile
  time.
  """
  import jax
  before = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", before)
