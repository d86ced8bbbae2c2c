"""The data set registry (spikejax.data.registry): one table for image and event sets, clear
errors, new sets registered from outside the package, and one-way imports inside data/."""

import ast
import dataclasses
import pathlib

import numpy as np
import pytest

import spikejax.data as D
from spikejax.data import registry as R
from spikejax.data import sources
from spikejax.data.augment import AugmentConfig
from spikejax.data.seg_augment import SegPipelineConfig

DATA_DIR = pathlib.Path(D.__file__).parent


# --------------------------------------------------------------------------- the table


def test_every_registered_spec_is_consistent():
  names = D.list_datasets()
  assert {"fashion_mnist", "cifar10", "imagenet2012", "event_fashion_mnist", "cifar10_dvs",
          "har_dvs"} <= set(names)
  assert sorted(D.DATASETS) == names == sorted(D.list_datasets("image") +
                                               D.list_datasets("event") +
                                               D.list_datasets("segmentation") +
                                               D.list_datasets("detection"))
  assert sorted(D.SPECS) == D.list_datasets("image")
  assert sorted(D.EVENT_SPECS) == D.list_datasets("event")
  for name in names:
    spec = D.get_spec(name)
    assert spec is D.DATASETS[name] and spec.name == name
    assert spec.kind in R.KINDS and callable(spec.builder)
    assert isinstance(spec.num_classes, int) and spec.num_classes >= 1
    h, w, c = spec.input_shape
    assert h == w >= 1 and c >= 1 and (spec.image_size, spec.channels) == (h, c)
    assert isinstance(spec.augment, AugmentConfig)
    assert all(isinstance(n, int) and n > 0 for n in spec.splits.values())
    if spec.kind == "segmentation":
      assert name not in D.SPECS and name not in D.EVENT_SPECS
      assert len(spec.mean) in (1, c) and len(spec.std) in (1, c)
      assert isinstance(spec.seg, SegPipelineConfig) and spec.label_feature
      assert spec.example_shape() == (h, w, c)
    elif spec.kind == "detection":
      assert name not in D.SPECS and name not in D.EVENT_SPECS
      assert len(spec.mean) in (1, c) and len(spec.std) in (1, c)
      assert isinstance(spec.det, D.DetPipelineConfig) and spec.example_shape() == (h, w, c)
    elif spec.kind == "image":
      assert name in D.SPECS and name not in D.EVENT_SPECS
      assert len(spec.mean) in (1, c) and len(spec.std) in (1, c)
      assert all(0 < m < 1 for m in spec.mean) and all(0 < s < 1 for s in spec.std)
      assert spec.fit in R.FITS
      assert spec.example_shape() == (h, w, c)
      assert spec.example_shape(16, 3) == (16, 16, 3)
    else:
      assert name in D.EVENT_SPECS and name not in D.SPECS
      assert c == 2 and spec.event_format in R.EVENT_FORMATS and not spec.in_memory
      assert len(spec.sensor_size) == 2 and min(spec.sensor_size) >= 1
      assert spec.example_shape(time_steps=3) == (3, h, w, 2)
      # the default augmentation is one the event pipeline accepts
      D.event_pipeline._check_augment(spec.augment)  # pylint: disable=protected-access


def test_known_sizes():
  """The facts the old SPECS / EVENT_SPECS tables held, now in the one table."""
  want = {"fashion_mnist": (10, (28, 28, 1)), "cifar10": (10, (32, 32, 3)),
          "imagenet2012": (1000, (224, 224, 3)), "event_fashion_mnist": (10, (34, 34, 2)),
          "cifar10_dvs": (10, (128, 128, 2)), "har_dvs": (300, (224, 224, 2))}
  for name, (classes, shape) in want.items():
    assert (D.get_spec(name).num_classes, D.get_spec(name).input_shape) == (classes, shape)
  assert D.get_spec("har_dvs").sensor_size == (346, 260)
  assert D.get_spec("fashion_mnist").fit == "pad" and D.get_spec("fashion_mnist").in_memory
  assert D.get_spec("imagenet2012").augment.randaugment == "rand-m9-mstd0.5-inc1"
  # the old import paths are views of the same table
  from spikejax.data.event_pipeline import EVENT_SPECS
  from spikejax.data.pipeline import SPECS
  assert SPECS["cifar10"] is D.get_spec("cifar10")
  assert EVENT_SPECS["har_dvs"] is D.get_spec("har_dvs")
  with pytest.raises(KeyError):
    SPECS["har_dvs"]  # pylint: disable=pointless-statement


def test_get_spec_errors_clearly():
  with pytest.raises(ValueError) as e:
    D.get_spec("cifar10dvs")
  msg = str(e.value)
  assert "unsupported dataset 'cifar10dvs'" in msg and "Did you mean 'cifar10_dvs'?" in msg
  assert all(n in msg for n in D.list_datasets())
  with pytest.raises(ValueError) as e:
    D.get_spec("zzzz")
  assert "Did you mean" not in str(e.value) and "fashion_mnist" in str(e.value)
  with pytest.raises(ValueError, match="Did you mean 'imagenet2012'"):
    D.get_dataset("imagenet2021", split="train", batch_size=2, train=True, process_index=0,
                  process_count=1)
  with pytest.raises(ValueError, match="kind must be"):
    D.list_datasets("video")


def test_bad_specs_are_rejected():
  ok = dict(name="x", kind="image", num_classes=2, input_shape=(4, 4, 1),
            builder=lambda *a, **k: None, mean=(0.5,), std=(0.5,))
  R.DatasetSpec(**ok)
  for change, match in (({"num_classes": 0}, "num_classes"), ({"builder": 3}, "builder"),
                        ({"kind": "audio"}, "kind"), ({"input_shape": (4, 5, 1)}, "input_shape"),
                        ({"input_shape": (0, 0, 1)}, "input_shape"),
                        ({"mean": (0.1, 0.2)}, "mean"), ({"std": (0.0,)}, "std"),
                        ({"fit": "stretch"}, "fit"), ({"augment": {"flip": True}}, "augment"),
                        ({"splits": {"train": -1}}, "split sizes"),
                        ({"kind": "event", "input_shape": (4, 4, 3), "sensor_size": (4, 4)},
                         "2 channels"),
                        ({"kind": "event", "input_shape": (4, 4, 2)}, "sensor_size"),
                        ({"kind": "event", "input_shape": (4, 4, 2), "sensor_size": (4, 4),
                          "event_format": "video"}, "event_format")):
    with pytest.raises(ValueError, match=match):
      R.DatasetSpec(**{**ok, **change})


def test_register_replace_unregister():
  spec = R.DatasetSpec(name="test_tmp_set", kind="image", num_classes=2, input_shape=(4, 4, 1),
                       builder=lambda *a, **k: None, mean=(0.5,), std=(0.5,))
  assert "test_tmp_set" not in D.DATASETS
  try:
    assert D.register(spec) is spec and D.get_spec("test_tmp_set") is spec
    assert "test_tmp_set" in D.SPECS and "test_tmp_set" not in D.EVENT_SPECS
    with pytest.raises(ValueError, match="already registered"):
      D.register(spec)
    other = dataclasses.replace(spec, num_classes=3)
    D.register(other, replace=True)
    assert D.get_spec("test_tmp_set").num_classes == 3
    with pytest.raises(TypeError):
      D.register({"name": "dict"})
  finally:
    D.unregister("test_tmp_set")
  assert "test_tmp_set" not in D.DATASETS
  with pytest.raises(ValueError, match="unsupported"):
    D.unregister("test_tmp_set")


# --------------------------------------------------------------------------- new data sets


def _squares(n, size=6, seed=0):
  """``n`` uint8 grey images with a bright square in class-dependent corners (3 classes)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, n).astype(np.int32)
  images = rng.integers(0, 60, (n, size, size, 1)).astype(np.uint8)
  for i, y in enumerate(labels):
    r, c = [(0, 0), (0, size // 2), (size // 2, 0)][y]
    images[i, r:r + size // 2, c:c + size // 2] = 200
  return images, labels


SPLITS = {"train": _squares(40, seed=1), "test": _squares(10, seed=2)}
CALLS = []


def _array_builder(spec, split, *, data_dir, download):
  CALLS.append((spec.name, split, data_dir, download))
  return sources.ArraySource(*SPLITS[split])


@pytest.fixture
def squares():
  """An image set registered from outside spikejax.data: arrays in memory, no tfds."""
  spec = D.register(R.DatasetSpec(
      name="test_squares", kind="image", num_classes=3, input_shape=(6, 6, 1),
      builder=_array_builder, mean=(0.25,), std=(0.5,), in_memory=True, fit="pad",
      augment=AugmentConfig(crop="pad", padding=1, flip=True, label_smoothing=0.2),
      splits={"train": 40, "test": 10}))
  yield spec
  D.unregister("test_squares")


def test_registered_image_set_loads_through_get_dataset(squares):
  CALLS.clear()
  kw = dict(process_index=0, process_count=1, prefetch=0)
  ev = D.get_dataset("test_squares", split="test", batch_size=4, train=False, **kw)
  assert CALLS == [("test_squares", "test", None, True)]  # the spec was looked up once
  assert ev.spec is squares and isinstance(ev, D.Dataset)
  assert (ev.num_examples, ev.steps_per_epoch, ev.num_classes, ev.image_shape) == \
      (10, 3, 3, (6, 6, 1))
  batches = list(ev)
  assert [b["mask"].sum() for b in batches] == [4, 4, 2]
  x = np.concatenate([b["image"] for b in batches])[:10]
  pixels = np.rint((x * 0.5 + 0.25) * 255).astype(np.int64)
  np.testing.assert_array_equal(pixels, SPLITS["test"][0])
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:10],
                                SPLITS["test"][1])
  # 'pad' fit to a larger side, grey replicated to 3 channels
  big = D.get_dataset("test_squares", split="test", batch_size=10, train=False, image_size=8,
                      channels=3, **kw).get_batch(0, 0)["image"]
  assert big.shape == (10, 8, 8, 3)
  np.testing.assert_array_equal(big[:, 1:7, 1:7, :1], x)

  tr = D.get_dataset("test_squares", split="train", batch_size=8, train=True, seed=3, **kw)
  assert tr.augment == squares.augment  # augment='default' is the spec's
  assert tr.steps_per_epoch == 5
  b = tr.get_batch(0, 0)
  assert b["image"].shape == (8, 6, 6, 1) and b["target"].shape == (8, 3)
  np.testing.assert_allclose(b["target"].max(-1), 1 - 0.2 + 0.2 / 3, rtol=1e-6)
  again = D.get_dataset("test_squares", split="train", batch_size=8, train=True, seed=3, **kw)
  np.testing.assert_array_equal(again.get_batch(1, 2)["image"], tr.get_batch(1, 2)["image"])
  plain = D.get_dataset("test_squares", split="train", batch_size=8, train=True, seed=3,
                        augment="none", **kw).get_batch(0, 0)
  idx = tr.batch_indices(0, 0)[0]
  pixels = np.rint((plain["image"] * 0.5 + 0.25) * 255).astype(np.int64)
  np.testing.assert_array_equal(pixels, SPLITS["train"][0][idx])
  # two processes read disjoint halves
  halves = [D.get_dataset("test_squares", split="train", batch_size=8, train=False,
                          process_index=p, process_count=2) for p in (0, 1)]
  assert halves[0].shard == (0, 20) and halves[1].shard == (20, 40)
  # the array loader of small sets works on it too
  images, labels = D.load_split_arrays("test_squares", "train")
  np.testing.assert_array_equal(images, SPLITS["train"][0])
  with pytest.raises(ValueError, match="frames= applies"):
    D.get_dataset("test_squares", split="test", batch_size=2, train=False, frames={}, **kw)


def test_unregistered_spec_streaming_path():
  """A spec passed directly (not registered), read per batch (in_memory=False) and fitted by
  center crop, like imagenet2012's path."""
  spec = R.DatasetSpec(name="test_stream", kind="image", num_classes=3, input_shape=(4, 4, 1),
                       builder=_array_builder, mean=(0.5,), std=(0.25,), fit="center_crop")
  assert "test_stream" not in D.DATASETS
  ev = D.get_dataset(spec, split="test", batch_size=5, train=False, process_index=0,
                     process_count=1, crop_pct=0.6)
  x = np.concatenate([b["image"] for b in ev])
  pixels = np.rint((x * 0.25 + 0.5) * 255).astype(np.int64)
  np.testing.assert_array_equal(pixels, SPLITS["test"][0][:, 1:5, 1:5])  # resize 6, crop 4
  tr = D.get_dataset(spec, split="train", batch_size=4, train=True, seed=0, process_index=0,
                     process_count=1, augment={"crop": "rrc"}, prefetch=0)
  assert tr.get_batch(0, 0)["image"].shape == (4, 4, 4, 1)


def _streams(n, seed):
  rng = np.random.default_rng(seed)
  records = []
  for i in range(n):
    k = int(rng.integers(20, 60))
    t = np.sort(rng.integers(0, 1000, k)).astype(np.int32)
    records.append({"events": {"t": t, "x": rng.integers(0, 8, k).astype(np.uint16),
                               "y": rng.integers(0, 6, k).astype(np.uint16),
                               "p": rng.integers(0, 2, k).astype(np.uint8)},
                    "label": i % 2})
  return records


@pytest.fixture
def blinks():
  """An event set registered from outside spikejax.data: event streams in memory."""
  data = {"train": _streams(12, 0), "test": _streams(5, 1)}

  def build(spec, split, *, data_dir, download):
    del spec, data_dir, download
    return sources.RecordSource(data[split], metadata={"sensor_size": [8, 6]})

  spec = D.register(R.DatasetSpec(
      name="test_blinks", kind="event", num_classes=2, input_shape=(4, 4, 2), builder=build,
      sensor_size=(8, 6), augment=AugmentConfig(crop="none", flip=True)))
  yield spec, data
  D.unregister("test_blinks")


def test_registered_event_set_loads_through_get_dataset(blinks):
  from spikejax.data import events as E
  spec, data = blinks
  ev = D.get_dataset("test_blinks", split="test", batch_size=4, train=False, process_index=0,
                     process_count=1, frames={"time_steps": 3})
  assert ev.spec is spec and ev.image_shape == (3, 4, 4, 2) and ev.sensor_size == (8, 6)
  batches = list(ev)
  assert [b["mask"].sum() for b in batches] == [4, 1]
  x = np.concatenate([b["image"] for b in batches])[:5]
  for got, rec in zip(x, data["test"]):
    e = rec["events"]
    stream = E.EventStream.from_arrays(np.asarray(e["t"], np.int64), e["x"], e["y"], e["p"],
                                       sensor_size=(8, 6))
    np.testing.assert_array_equal(got, E.events_to_frames(stream, 3, size=(4, 4)))
  tr = D.get_dataset("test_blinks", split="train", batch_size=4, train=True, seed=1,
                     process_index=0, process_count=1, frames={"time_steps": 2}, image_size=8,
                     prefetch=0)
  b = tr.get_batch(0, 0)
  assert tr.augment == spec.augment
  assert b["image"].shape == (4, 2, 8, 8, 2) and b["target"].shape == (4, 2)
  assert D.model_input(b["image"]).shape == (2, 4, 8, 8, 2)
  with pytest.raises(ValueError, match="2 channels"):
    D.get_dataset("test_blinks", split="test", batch_size=4, train=False, channels=3,
                  process_index=0, process_count=1)
  with pytest.raises(ValueError, match="reads images"):
    D.load_split_arrays("test_blinks", "test")


# --------------------------------------------------------------------------- layering


def _data_imports() -> dict[str, set[str]]:
  """``spikejax.data`` module -> the spikejax modules it imports (module level and inside
  functions); ``from P import N`` counts as ``P.N`` when that is a module."""
  root = DATA_DIR.parent.parent
  mods = {}
  for p in (root / "spikejax").rglob("*.py"):
    parts = p.relative_to(root).with_suffix("").parts
    mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
  graph = {}
  for name, path in mods.items():
    if not name.startswith("spikejax.data"):
      continue
    is_pkg = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        targets.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          pkg = name.split(".") if is_pkg else name.split(".")[:-1]
          base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
        for a in node.names:
          targets.add(f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base)
    graph[name] = {t for t in targets if t in mods and t != name}
  return graph


def test_data_imports_run_one_way():
  graph = _data_imports()
  assert {"spikejax.data.registry", "spikejax.data.pipeline"} <= set(graph)
  upward = {(m, t) for m, ts in graph.items() for t in ts
            if t.startswith(("spikejax.train", "spikejax.analysis"))}
  assert not upward
  # no circle: a depth-first search finds no back edge
  state, path = {}, []

  def visit(m):
    state[m] = 1
    path.append(m)
    for t in sorted(graph.get(m, ())):
      if state.get(t) == 1:
        raise AssertionError("import circle: " + " -> ".join(path[path.index(t):] + [t]))
      if t not in state:
        visit(t)
    path.pop()
    state[m] = 2

  for m in sorted(graph):
    if m not in state:
      visit(m)
  # the builders and the registry import no pipeline
  pipelines = {"spikejax.data.pipeline", "spikejax.data.images", "spikejax.data.event_pipeline",
               "spikejax.data.batching"}
  for low in ("registry", "sources", "event_datasets", "dvs_datasets", "augment"):
    assert not graph[f"spikejax.data.{low}"] & pipelines, low
