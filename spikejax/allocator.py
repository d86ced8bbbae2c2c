"""A host ``malloc`` that keeps freed memory mapped, for XLA:CPU training steps.

XLA:CPU allocates a step's temporaries afresh on every call (about 0.9 GB for the
``espikeformer_s`` training step at 224 px, batch 8). glibc serves allocations that large with
``mmap`` and unmaps them on free, so each step touches ~230,000 new 4 KiB pages, and every
first touch is a page fault that zeroes the page: on this 2-core VM a fresh 128 MB array is
written at 7.5 GB/s against 38 GB/s into memory already mapped (numpy, measured). With
tcmalloc preloaded, freed pages are reused and that step took 0.62 s instead of 0.85-0.95 s
(``python -m spikejax.bench --model espikeformer_s --resolution 224 --batch 8 --train --steps 6
--json``, run with and without ``LD_PRELOAD``; docs/benchmarks.md, "Host malloc").

A preload only works from the start of a process, so the command-line entry points
(``spikejax.main``, ``spikejax.bench``, ``launch.sweep``) call :func:`reexec` first: when the
process runs without a fast allocator it replaces itself (``os.execve``, same PID, same argv)
with one that has tcmalloc in ``LD_PRELOAD`` (Debian/Ubuntu package ``libtcmalloc-minimal4``),
or else glibc's transparent-huge-page tunable (``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``,
glibc >= 2.35; 0.65-0.70 s for the step above). ``SPIKEJAX_MALLOC`` chooses: ``auto``
(default), ``tcmalloc``, ``hugetlb`` or ``system`` (leave the process alone). In a notebook,
start the kernel with ``LD_PRELOAD`` set (docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import platform
import sys
from typing import Mapping

ENV_CHOICE = "SPIKEJAX_MALLOC"
CHOICES = ("auto", "tcmalloc", "hugetlb", "system")
_DONE = "SPIKEJAX_MALLOC_REEXEC"   # set in the re-executed process: never re-exec twice
_HUGETLB = "glibc.malloc.hugetlb=1"
_SEARCH = ("/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4", "/usr/lib64/libtcmalloc_minimal.so.4",
           "/usr/lib/libtcmalloc_minimal.so.4", "/usr/lib/*-linux-gnu/libtcmalloc.so.4",
           "/usr/lib64/libtcmalloc.so.4", "/usr/lib/libtcmalloc.so.4")


def find_tcmalloc() -> str | None:
  """The path of an installed tcmalloc shared library, or None."""
  for pattern in _SEARCH:
    hits = sorted(glob.glob(pattern))
    if hits:
      return hits[0]
  name = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
  return name if name and os.path.isabs(name) else None


def glibc_version() -> tuple[int, int] | None:
  lib, version = platform.libc_ver()
  if lib != "glibc" or not version:
    return None
  try:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)
  except ValueError:
    return None


def in_effect(env: Mapping[str, str] | None = None) -> str:
  """Which allocator this process runs with: ``tcmalloc``, ``jemalloc``, ``hugetlb`` or
  ``system`` (read from the environment it was started with)."""
  env = os.environ if env is None else env
  preload = env.get("LD_PRELOAD", "")
  if "tcmalloc" in preload:
    return "tcmalloc"
  if "jemalloc" in preload:
    return "jemalloc"
  if _HUGETLB in env.get("GLIBC_TUNABLES", "").split(":"):
    return "hugetlb"
  return "system"


def plan(env: Mapping[str, str], tcmalloc: str | None,
         glibc: tuple[int, int] | None) -> dict[str, str] | None:
  """The environment to re-execute with, or None to run as is.

  Raises ValueError for an unknown ``SPIKEJAX_MALLOC`` or an allocator asked for by name that
  this machine does not have.
  """
  choice = env.get(ENV_CHOICE, "auto").strip().lower() or "auto"
  if choice not in CHOICES:
    raise ValueError(f"{ENV_CHOICE}={env[ENV_CHOICE]!r} is not one of {CHOICES}.")
  if choice == "system" or env.get(_DONE) or in_effect(env) != "system":
    return None
  new = dict(env)
  new[_DONE] = "1"
  if choice in ("auto", "tcmalloc") and tcmalloc:
    new["LD_PRELOAD"] = ":".join(p for p in (tcmalloc, env.get("LD_PRELOAD", "")) if p)
    # tcmalloc reports every allocation above 1 GiB on stderr; XLA's temporaries often are
    new.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    return new
  if choice == "tcmalloc":
    raise ValueError(f"{ENV_CHOICE}=tcmalloc but no tcmalloc library was found; install it "
                     "(Debian/Ubuntu: apt-get install libtcmalloc-minimal4) or set "
                     f"{ENV_CHOICE}=auto.")
  if glibc is not None and glibc >= (2, 35):
    new["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES", ""), _HUGETLB) if t)
    return new
  if choice == "hugetlb":
    raise ValueError(f"{ENV_CHOICE}=hugetlb needs glibc >= 2.35 (found {glibc}); set "
                     f"{ENV_CHOICE}=auto or system.")
  return None


def reexec() -> None:
  """Re-executes this process with a fast allocator where it runs without one (see above).

  Call it first thing in a ``__main__`` block; it does nothing off Linux, inside an
  interpreter started without a script or module (``python -c``, notebooks), or once done.
  """
  if not sys.platform.startswith("linux") or not getattr(sys, "orig_argv", None):
    return
  if len(sys.orig_argv) < 2 or sys.orig_argv[1] == "-c":
    return
  try:
    new = plan(os.environ, find_tcmalloc(), glibc_version())
  except ValueError as e:
    sys.exit(f"error: {e}")
  if new is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, new)
