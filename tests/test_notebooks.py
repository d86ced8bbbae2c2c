"""The analysis notebooks execute end to end (nbclient) on a tiny configuration.

The spike-map and energy notebooks build (once, shared through the cache directory) two tiny
Fashion-MNIST models, the segmentation notebook the untrained ``runlocal`` model of
configs/seg_fashion_mnist_scenes.py on the ``tiny`` scenes set, the detection notebook that of
configs/det_fashion_mnist_scenes.py (untrained in tiny mode: the
analysis code is under test here, not the learning); all read everything through the public
API; any failing cell fails the test.
Needs the Debian Fashion-MNIST files (``launch/setup.sh`` installs them).
"""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

from spikejax.data import fashion_mnist

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ["spike_maps.ipynb", "energy.ipynb", "segmentation.ipynb", "detection.ipynb"]
FIGURES = {"spike_maps.ipynb": 3, "energy.ipynb": 1,    # matplotlib figures each one draws
           "segmentation.ipynb": 3, "detection.ipynb": 2}
MARKER = {"spike_maps.ipynb": "SFA model:", "energy.ipynb": "SFA model:",
          "segmentation.ipynb": "SEG model:", "detection.ipynb": "DET model:"}


def _have_data():
  try:
    fashion_mnist.source_dir_or_raise()
    return True
  except Exception:
    return False


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("notebook_models"))


@pytest.mark.skipif(not _have_data() and not os.environ.get("CI"),
                    reason="Fashion-MNIST files absent (apt-get install dataset-fashion-mnist)")
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_executes(name, cache, monkeypatch):
  monkeypatch.setenv("SPIKEJAX_NOTEBOOK_TINY", "1")
  monkeypatch.setenv("SPIKEJAX_NOTEBOOK_CACHE", cache)
  monkeypatch.delenv("SPIKEJAX_CHECKPOINT_SFA", raising=False)
  monkeypatch.delenv("SPIKEJAX_CHECKPOINT_VANILLA", raising=False)
  monkeypatch.delenv("SPIKEJAX_CHECKPOINT_SEG", raising=False)
  monkeypatch.delenv("SPIKEJAX_CHECKPOINT_DET", raising=False)
  # the kernel's inline backend: figures become image/png outputs (what the test counts)
  monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
  # one CPU device in the kernel (the suite's 8 fake devices are for sharding tests)
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("SPIKEJAX_TEST_COMPILE_FLAGS", ""))
  nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
  client = NotebookClient(nb, timeout=900, kernel_name="python3",
                          resources={"metadata": {"path": str(ROOT)}})
  client.execute()   # raises CellExecutionError naming the failing cell
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  text = "".join(o.get("text", "") for o in outputs)
  assert MARKER[name] in text
  # what they show: every figure rendered, and the Proposition 1 difference
  figures = sum("image/png" in o.get("data", {}) for o in outputs)
  assert figures == FIGURES[name], (name, figures)
  if name in ("spike_maps.ipynb", "segmentation.ipynb"):
    import re
    diff = float(re.search(r"logit difference (\S+)", text).group(1))
    assert diff < 1e-9, diff       # float64: spike-driven == integer (half_up rounding)
