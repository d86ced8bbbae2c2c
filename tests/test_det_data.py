"""Detection data (kind 'detection'): the Fashion-MNIST scenes as instances, mmdet's COCO
transforms (addendum B.2, trap 4) and the COCO record path on the in-memory ``coco_mock`` set."""

import dataclasses
import os

import numpy as np
import pytest

import spikejax.data as data
from spikejax.data import det_augment as DA
from spikejax.data.errors import DataError
from spikejax.data.seg_datasets import mock_coco, mock_coco_examples, write_mock_coco_annotations
from spikejax.data.seg_pipeline import decode_label

FMNIST = "/usr/share/datasets/fashion-mnist"
needs_fmnist = pytest.mark.skipif(not os.path.isdir(FMNIST),
                                  reason="apt-get install -y dataset-fashion-mnist")
KW = dict(process_index=0, process_count=1, prefetch=0)
KEYS = {"image", "image_hw", "gt_boxes", "gt_classes", "gt_valid", "gt_iscrowd", "gt_masks"}
EVAL_KEYS = KEYS | {"mask", "scale", "image_id"}


@pytest.fixture(scope="module")
def tiny_dir():
  """The ``tiny`` scenes set in the default tfds dir (built once, under a lock), as
  tests/test_seg_data.py builds it."""
  from spikejax.data.seg_datasets import prepare_fashion_mnist_scenes
  import tensorflow_datasets as tfds
  if not tfds.builder("fashion_mnist_scenes/tiny").is_prepared():
    prepare_fashion_mnist_scenes(None, config="tiny")
  return None


def check_contract(b, ds, train: bool):
  """Keys, shapes and dtypes of the batch contract (spikejax/data/det_pipeline.py)."""
  B, M, (H, W), s = ds.local_batch_size, ds.max_instances, ds.canvas, ds.mask_stride
  assert set(b) == (KEYS if train else EVAL_KEYS)
  want = {"image": ((B, H, W, ds.channels), np.float32), "image_hw": ((B, 2), np.int32),
          "gt_boxes": ((B, M, 4), np.float32), "gt_classes": ((B, M), np.int32),
          "gt_valid": ((B, M), np.bool_), "gt_iscrowd": ((B, M), np.bool_),
          "gt_masks": ((B, M, H // s, W // s), np.uint8), "mask": ((B,), np.float32),
          "scale": ((B, 2), np.float32), "image_id": ((B,), np.int32)}
  for k, v in b.items():
    assert (v.shape, v.dtype) == want[k], k
  assert ds.image_shape == (H, W, ds.channels)
  rows = b["gt_classes"] >= 0
  assert np.all(b["gt_classes"] < ds.num_classes)
  assert not np.any(b["gt_valid"] & b["gt_iscrowd"]) and np.all((b["gt_valid"] |
                                                                 b["gt_iscrowd"]) == rows)
  assert np.all(b["gt_boxes"][~rows] == 0) and np.all(b["gt_masks"][~rows] == 0)
  x1, y1, x2, y2 = np.moveaxis(b["gt_boxes"], -1, 0)
  hw = b["image_hw"].astype(np.float32)
  assert np.all((x1 >= 0) & (y1 >= 0) & (x2 <= hw[:, None, 1]) & (y2 <= hw[:, None, 0]))
  assert np.all((x2 > x1)[rows]) and np.all((y2 > y1)[rows])
  # padded pixels are exactly 0, as are the masks outside the real content
  for i, (h, w) in enumerate(b["image_hw"]):
    assert np.all(b["image"][i, h:] == 0) and np.all(b["image"][i, :, w:] == 0)
    assert np.all(b["gt_masks"][i, :, -(-h // s):] == 0)
    assert np.all(b["gt_masks"][i, :, :, -(-w // s):] == 0)


def mask_extent(m, stride=1):
  """(x1, y1, x2, y2) of a mask's pixels in canvas pixels (x2/y2 exclusive)."""
  ys, xs = np.nonzero(m)
  return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32) * stride


# --------------------------------------------------------------------------- scenes


@needs_fmnist
def test_scenes_det_batches_train_and_eval(tiny_dir):
  train = data.get_dataset("fashion_mnist_scenes_det_tiny", split="train", batch_size=8,
                           train=True, seed=3, **KW)
  assert isinstance(train, data.DetectionDataset) and train.layout == "scenes"
  assert (train.num_classes, train.image_shape, train.max_instances, train.mask_stride) == \
      (10, (96, 96, 1), 4, 1)
  assert train.class_names[0] == "T-shirt/top" and len(train.class_names) == 10
  b = train.get_batch(0, 1)
  check_contract(b, train, train=True)
  assert np.all(b["image_hw"] == 96) and not b["gt_iscrowd"].any()
  assert np.all(b["gt_valid"].sum(1) >= 1)     # every scene has 1-4 garments
  ev = data.get_dataset("fashion_mnist_scenes_det_tiny", split="test", batch_size=48,
                        train=False, **KW)
  assert len(ev) == 2
  first, last = ev.get_batch(0, 0), ev.get_batch(0, 1)
  check_contract(last, ev, train=False)
  np.testing.assert_array_equal(first["image_id"], np.arange(48))   # the example index
  assert last["mask"].sum() == 16 and np.all(last["mask"][:16] == 1)
  np.testing.assert_array_equal(last["image_id"], np.r_[np.arange(48, 64), -np.ones(32)])
  pad = slice(16, None)
  assert np.all(last["image"][pad] == 0) and not last["gt_valid"][pad].any()
  assert np.all(last["gt_classes"][pad] == -1) and np.all(last["scale"] == 1)
  # image_size: a square canvas; a pipeline without resizes fits the images into it
  small = data.get_dataset("fashion_mnist_scenes_det_tiny", split="test", batch_size=4,
                           train=False, image_size=64, channels=3, **KW)
  s = small.get_batch(0, 0)
  assert small.image_shape == (64, 64, 3) and s["gt_masks"].shape == (4, 4, 64, 64)
  np.testing.assert_allclose(s["scale"], 2 / 3)
  np.testing.assert_allclose(s["gt_boxes"], first["gt_boxes"][:4] * 2 / 3, rtol=1e-6)
  with pytest.raises(ValueError, match="unknown detection augment option"):
    data.get_dataset("fashion_mnist_scenes_det_tiny", split="train", batch_size=8, train=True,
                     augment={"flipp": True}, **KW)


@needs_fmnist
def test_scenes_det_boxes_masks_classes_follow_the_flip(tiny_dir):
  """Every box is its mask's extent, every mask lies on its class in the class map, and the
  image, masks and boxes are flipped together (some examples flipped, some not)."""
  ds = data.get_dataset("fashion_mnist_scenes_det_tiny", split="train", batch_size=16,
                        train=True, seed=5, **KW)
  spec = data.get_spec("fashion_mnist_scenes_det_tiny")
  src = spec.builder(spec, "train")
  flipped = []
  for step in range(2):
    b = ds.get_batch(0, step)
    idx = ds.batch_indices(0, step)[0] + ds.shard[0]
    for i, rec in enumerate(src.read(idx)):
      raw = data.sources.decode_image(rec["image"], 1)[..., 0]
      semantic = decode_label(rec["segmentation"])
      pixels = np.rint((b["image"][i, ..., 0] * spec.std[0] + spec.mean[0]) * 255)
      flip = not np.array_equal(pixels, raw)
      if flip:
        np.testing.assert_array_equal(pixels, raw[:, ::-1])
        semantic = semantic[:, ::-1]
      flipped.append(flip)
      n = int(b["gt_valid"][i].sum())
      assert n == int((np.asarray(rec["classes"]) >= 0).sum())
      for k in range(n):
        m = b["gt_masks"][i, k].astype(bool)
        np.testing.assert_array_equal(b["gt_boxes"][i, k], mask_extent(m))
        assert np.all(semantic[m] == 1 + b["gt_classes"][i, k])
        assert b["gt_classes"][i, k] == rec["classes"][k]
  assert 0 < sum(flipped) < len(flipped)


@needs_fmnist
def test_scenes_det_is_deterministic_per_seed_epoch_index(tiny_dir):
  def make(batch_size, seed=7, **kw):
    return data.get_dataset("fashion_mnist_scenes_det_tiny", split="train",
                            batch_size=batch_size, train=True, seed=seed, num_workers=4, **kw,
                            **KW)
  a, again, halves = make(8), make(8), make(4)
  x = a.get_batch(1, 0)
  for k, v in x.items():
    np.testing.assert_array_equal(v, again.get_batch(1, 0)[k])
    # an example's transform depends on (seed, epoch, index), not on its batch
    np.testing.assert_array_equal(v, np.concatenate([halves.get_batch(1, 0)[k],
                                                     halves.get_batch(1, 1)[k]]))
  assert not np.array_equal(x["image"], a.get_batch(2, 0)["image"])
  assert not np.array_equal(x["image"], make(8, seed=8).get_batch(1, 0)["image"])
  # the same example in two epochs: flipped in one, not in the other, for some example
  flips = []
  for epoch in range(4):
    order = a.permutation(epoch)
    pos = np.argsort(order)[:8]          # where examples 0..7 sit in this epoch
    batch = np.concatenate([a.get_batch(epoch, s)["image"] for s in range(len(a))])
    flips.append(batch[pos])
  assert any(not np.array_equal(flips[0][j], flips[e][j]) for e in range(1, 4) for j in range(8))


@needs_fmnist
def test_scenes_det_ratio_range_pads_or_crops_to_the_canvas(tiny_dir):
  ds = data.get_dataset("fashion_mnist_scenes_det_tiny", split="train", batch_size=16,
                        train=True, seed=2, augment={"ratio_range": (0.6, 1.6)}, **KW)
  b = ds.get_batch(0, 0)
  check_contract(b, ds, train=True)
  assert b["image_hw"].min() < 96 and b["image_hw"].max() == 96   # shrunk (padded) and cropped
  for i in range(16):
    cropped = b["image_hw"][i, 0] == 96
    for k in np.nonzero(b["gt_valid"][i])[0]:
      m, box = b["gt_masks"][i, k], b["gt_boxes"][i, k]
      assert m.any()
      if cropped:   # the box is clipped to the crop, the mask cropped: it lies inside the box
        ext = mask_extent(m)
        assert np.all(ext[:2] >= box[:2] - 1.7) and np.all(ext[2:] <= box[2:] + 1.7)
      else:         # resized only: the box is the (nearest-resized) mask's extent
        np.testing.assert_allclose(box, mask_extent(m), atol=1.7)


# --------------------------------------------------------------------------- transforms


def test_keep_ratio_resize_matches_mmcv():
  """mmcv rescale: f = min(long_max / long, short_max / short), size int(x * f + 0.5)."""
  cases = [((480, 640), (1333, 800), (800, 1067)),    # f = 800/480
           ((427, 640), (853, 512), (512, 767)),      # f = 512/427
           ((500, 333), (1333, 800), (1201, 800)),    # portrait, f = 800/333
           ((300, 2000), (1333, 800), (200, 1333)),   # the long side binds, f = 0.6665
           ((100, 150), (853, 512), (512, 768)),      # enlarged, f = 5.12
           ((96, 128), (126, 76), (76, 101))]         # coco_mock's eval scale
  for hw, scale, want in cases:
    ex = DA.Example.new(np.zeros(hw + (3,), np.uint8), [[10, 20, 110, 90], [0, 0, 5, 5]])
    out = DA.rescale(ex, scale)
    assert out.hw == want, (hw, scale)
    sy, sx = want[0] / hw[0], want[1] / hw[1]
    assert out.scale == pytest.approx((sy, sx))
    np.testing.assert_allclose(out.boxes[0], np.minimum([10 * sx, 20 * sy, 110 * sx, 90 * sy],
                                                        [want[1], want[0]] * 2), rtol=1e-6)
  # trap 4: the official train pipeline first fits every image into (853, 512)
  cfg = DA.DetPipelineConfig(initial_resize=True, initial_scale=(853, 512))
  ex = DA.Example.new(np.zeros((480, 640, 3), np.uint8), np.zeros((0, 4)))
  out = DA.train_example(ex, np.random.default_rng(0), cfg, (1344, 1344))
  assert [int(v.sum()) for v in ((out.ymap >= 0), (out.xmap >= 0))] == [512, 683]


def test_crop_clips_boxes_and_drops_empty_ones():
  h, w = 40, 60
  boxes = np.array([[0, 0, 10, 10],      # clipped to the crop's corner
                    [50, 30, 60, 40],    # outside: dropped
                    [5, 5, 30, 30],      # clipped
                    [25, 12, 35, 20],    # inside: translated
                    [0, 18, 8, 30]],     # touches the crop's left edge only: empty, dropped
                   np.float32)
  masks = np.zeros((5, h, w), np.uint8)
  for k, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
    masks[k, y1:y2, x1:x2] = 1
  ex = DA.Example.new(np.zeros((h, w, 3), np.uint8), boxes)
  out = DA.crop(ex, 8, 8, 20, 30)        # rows 8..27, columns 8..37
  assert out.hw == (20, 30)
  np.testing.assert_array_equal(out.keep, [0, 2, 3])
  np.testing.assert_array_equal(out.boxes, [[0, 0, 2, 2], [0, 0, 22, 20], [17, 4, 27, 12]])
  got = DA.gather_masks(masks[out.keep], DA.pad(out, (24, 32)))
  assert got.shape == (3, 24, 32) and got[:, 20:].sum() == 0 and got[:, :, 30:].sum() == 0
  for m, box in zip(got, out.boxes):
    np.testing.assert_array_equal(mask_extent(m), box)   # masks cropped with the boxes
  # absolute_range: each side in [min(side, lo), min(side, hi)]
  rng = np.random.default_rng(0)
  sizes = np.array([DA.absolute_range_size((500, 300), rng, (384, 600)) for _ in range(200)])
  assert sizes[:, 0].min() >= 384 and sizes[:, 0].max() <= 500 and np.all(sizes[:, 1] == 300)
  assert len(np.unique(sizes[:, 0])) > 50


def test_flip_and_mask_stride():
  boxes = np.array([[2, 3, 7, 9]], np.float32)
  masks = np.zeros((1, 12, 16), np.uint8)
  masks[0, 3:9, 2:7] = 1
  ex = DA.flip(DA.Example.new(np.zeros((12, 16, 1), np.uint8), boxes))
  np.testing.assert_array_equal(ex.boxes, [[9, 3, 14, 9]])   # x1' = w - x2, x2' = w - x1
  full = DA.gather_masks(masks, ex)
  np.testing.assert_array_equal(full[0], masks[0, :, ::-1])
  np.testing.assert_array_equal(DA.gather_masks(masks, ex, 4)[0], full[0, ::4, ::4])
  # masks resize nearest as OpenCV's INTER_NEAREST (mmcv): src = floor(dst * old / new)
  cols = np.zeros((1, 1, 10), np.uint8)
  cols[0, 0] = [1, 0, 1, 1, 0, 1, 0, 1, 1, 0]
  ex = DA.resize(DA.Example.new(np.zeros((1, 10, 1), np.uint8), np.zeros((0, 4))), (1, 4))
  np.testing.assert_array_equal(ex.xmap, [0, 2, 5, 7])
  np.testing.assert_array_equal(DA.gather_masks(cols, ex)[0, 0], [1, 1, 1, 1])


def test_official_coco_pipeline_numbers():
  cfg = DA.coco_pipeline()
  assert data.get_spec("coco").det == cfg
  assert cfg.initial_resize and cfg.initial_scale == (853, 512) and cfg.flip
  assert cfg.train_scales == tuple((1333, s) for s in range(480, 801, 32))
  assert len(cfg.train_scales) == 11
  assert cfg.crop_scales == ((4200, 400), (4200, 500), (4200, 600))
  assert cfg.crop_size == (384, 600) and cfg.eval_scale == (1333, 800)
  assert cfg.canvas == (1344, 1344) and cfg.mask_stride == 4
  small = DA.coco_pipeline(0.25)
  assert small.canvas == (352, 352) and small.eval_scale == (333, 200)
  ev = DA.DetPipelineConfig.none(cfg)
  assert not ev.flip and not ev.train_scales and ev.eval_scale == (1333, 800)
  assert data.get_spec("coco").input_shape == (1344, 1344, 3)


def test_coco_without_data_says_how_to_build_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="tfds build coco/2017"):
    data.get_dataset("coco", split="validation", batch_size=1, train=False,
                     data_dir=str(tmp_path), **KW)


# --------------------------------------------------------------------------- coco_mock


def test_coco_mock_eval_sizes_scale_and_padding():
  ev = data.get_dataset("coco_mock", split="validation", batch_size=4, train=False, **KW)
  b = ev.get_batch(0, 0)
  check_contract(b, ev, train=False)
  # (120, 80), (64, 64), (100, 150), (150, 100) fitted into (126, 76) by hand
  np.testing.assert_array_equal(b["image_hw"], [[114, 76], [76, 76], [76, 114], [114, 76]])
  np.testing.assert_allclose(b["scale"], [[0.95] * 2, [76 / 64] * 2, [0.76] * 2, [0.76] * 2],
                             rtol=1e-6)
  np.testing.assert_array_equal(b["image_id"], [900, 901, 902, 903])
  assert np.all(b["mask"] == 1)
  # boxes are the original ones scaled
  for i, raw in enumerate(mock_coco_examples("validation")):
    n = len(raw["boxes"])
    sy, sx = b["scale"][i]
    np.testing.assert_allclose(b["gt_boxes"][i, :n], raw["boxes"] * [sx, sy, sx, sy],
                               rtol=1e-5, atol=1e-4)


def test_coco_mock_records_as_stored_with_crowd_and_truncation():
  """With no resize (eval_scale None) and mask stride 1, batches hold the records exactly:
  images, boxes, masks, classes; the crowd region is kept with gt_valid False and gt_iscrowd
  True; the example with 10 instances keeps its first 8 and the cut is counted."""
  ds = data.get_dataset("coco_mock", split="train", batch_size=8, train=False,
                        augment={"eval_scale": None, "mask_stride": 1, "canvas": (160, 160)},
                        **KW)
  assert ds.layout == "coco" and ds.annotation_file is None and ds.image_shape == (160, 160, 3)
  b = ds.get_batch(0, 0)
  check_contract(b, ds, train=False)
  spec = data.get_spec("coco_mock")
  crowd_seen = 0
  for i, raw in enumerate(mock_coco_examples("train")):
    h, w = raw["image"].shape[:2]
    n = min(len(raw["boxes"]), 8)
    assert tuple(b["image_hw"][i]) == (h, w) and b["image_id"][i] == raw["image_id"]
    pixels = np.rint((b["image"][i, :h, :w] * spec.std + spec.mean) * 255)
    np.testing.assert_array_equal(pixels, raw["image"])
    np.testing.assert_allclose(b["gt_boxes"][i, :n], raw["boxes"][:n], atol=2e-4)
    np.testing.assert_array_equal(b["gt_masks"][i, :n, :h, :w], raw["masks"][:n])
    np.testing.assert_array_equal(b["gt_classes"][i, :n], raw["labels"][:n])
    np.testing.assert_array_equal(b["gt_iscrowd"][i, :n], raw["iscrowd"][:n])
    np.testing.assert_array_equal(b["gt_valid"][i, :n], ~raw["iscrowd"][:n])
    assert np.all(b["gt_classes"][i, n:] == -1)
    crowd_seen += int(b["gt_iscrowd"][i].sum())
    for k in range(n):
      np.testing.assert_allclose(b["gt_boxes"][i, k], mask_extent(b["gt_masks"][i, k]),
                                 atol=2e-4)
  assert crowd_seen == 1
  assert len(mock_coco_examples("train")[2]["boxes"]) == 10
  assert (ds.truncated_instances, ds.truncated_examples) == (2, 1)
  assert b["gt_valid"][2].sum() == 8


def test_coco_mock_train_pipeline():
  """The official structure at the mock's scales: the last resize fits one of the train
  scales, boxes stay inside the content and on their masks, and the crop branch (b) drops
  instances in some examples only."""
  counts = [min(len(r["boxes"]), 8) for r in mock_coco_examples("train")]
  for crop in (True, False):
    aug = {"mask_stride": 1} if crop else {"mask_stride": 1, "crop_scales": ()}
    ds = data.get_dataset("coco_mock", split="train", batch_size=8, train=True, seed=0,
                          augment=aug, **KW)
    shorts = {s for _, s in ds.pipeline.train_scales}
    dropped = []
    for epoch in range(6):
      b = ds.get_batch(epoch, 0)
      check_contract(b, ds, train=True)
      for i, j in enumerate(ds.batch_indices(epoch, 0)[0]):
        h, w = b["image_hw"][i]
        assert min(h, w) in shorts or max(h, w) == 126, (h, w)
        rows = b["gt_classes"][i] >= 0
        dropped.append(rows.sum() < counts[j])
        for k in np.nonzero(rows)[0]:
          m, box = b["gt_masks"][i, k], b["gt_boxes"][i, k]
          if not m.any():   # a box clipped to a sliver can lose its last sampled pixel
            assert crop
            continue
          # Each nearest resize moves a mask edge by < 1 pixel of its output and the later
          # resizes magnify that (the mock's crops are up-scaled ~2x): up to 5 px
          ext = mask_extent(m)
          if crop:   # a crop clips the box and crops the mask (an occluded shape's mask
            # need not fill its box): the mask lies inside the box
            assert np.all(ext[:2] >= box[:2] - 5) and np.all(ext[2:] <= box[2:] + 5)
          else:      # two resizes and a flip: the box is the mask's extent
            np.testing.assert_allclose(box, ext, atol=3)
    if crop:
      assert 0 < np.mean(dropped) < 1
    else:
      assert not any(dropped)
  again = data.get_dataset("coco_mock", split="train", batch_size=8, train=True, seed=0,
                           augment={"mask_stride": 1}, **KW)
  ds = data.get_dataset("coco_mock", split="train", batch_size=8, train=True, seed=0,
                        augment={"mask_stride": 1}, **KW)
  for k, v in ds.get_batch(3, 0).items():
    np.testing.assert_array_equal(v, again.get_batch(3, 0)[k])


def _mock_without_masks():
  spec = data.get_spec("coco_mock")
  return dataclasses.replace(
      spec, name="coco_mock_nomasks",
      builder=lambda spec, split, **kw: mock_coco(spec, split, masks=False, **kw))


def test_coco_masks_from_the_annotation_file(tmp_path):
  """Records without masks (as tfds coco/2017's) take them from instances_val2017.json by
  annotation id (compressed RLEs and the crowd's uncompressed one): the same batches as the
  masks stored in the records."""
  path = write_mock_coco_annotations(str(tmp_path), "validation")
  assert path == str(tmp_path / "instances_val2017.json")
  spec = _mock_without_masks()
  for train in (False, True):
    kw = dict(split="validation", batch_size=4, train=train, seed=1, **KW)
    ds = data.get_dataset(spec, augment={"annotations_dir": str(tmp_path)}, **kw)
    assert ds.annotation_file == path
    ref = data.get_dataset("coco_mock", **kw)
    got, want = ds.get_batch(0, 0), ref.get_batch(0, 0)
    assert got["gt_masks"].any() and got["gt_iscrowd"].any()
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])


def test_missing_annotation_file_is_one_clear_error(tmp_path, monkeypatch):
  monkeypatch.delenv("COCO_ANNOTATIONS_DIR", raising=False)
  spec = _mock_without_masks()
  where = tmp_path / "nowhere"
  with pytest.raises(DataError) as e:
    data.get_dataset(spec, split="validation", batch_size=4, train=False,
                     augment={"annotations_dir": str(where)}, **KW)
  msg = str(e.value)
  assert "\n" not in msg and str(where / "instances_val2017.json") in msg
  assert "annotations_dir" in msg and "masks=False" in msg
  assert isinstance(e.value, FileNotFoundError)
  # the default location: <data dir>/downloads/manual/annotations
  with pytest.raises(DataError, match=str(tmp_path / "downloads" / "manual" / "annotations")):
    data.get_dataset(spec, split="train", batch_size=4, train=True, data_dir=str(tmp_path),
                     **KW)
  boxes_only = data.get_dataset(spec, split="validation", batch_size=4, train=False,
                                augment={"masks": False, "annotations_dir": str(where)}, **KW)
  b = boxes_only.get_batch(0, 0)
  assert "gt_masks" not in b and b["gt_valid"].any()
