"""COCO evaluation (spikejax.train.coco_eval) on hand-made cases whose APs are worked out by hand.

COCO's AP of one class at one IoU threshold: detections sorted by score, each a TP (matched to
an unmatched gt at IoU >= t) or an FP; precision made monotone from the right and read at the
101 recall thresholds 0, 0.01, .., 1 (0 past the highest recall reached), then averaged.
AP@[.5:.95] averages that over t = 0.5, 0.55, .., 0.95; the mean over classes skips classes
without ground truth.
"""

import numpy as np
import pytest

from spikejax.train import coco_eval

HW = (64, 64)


def _img(image_id, boxes, classes, masks=None, crowd=None, hw=HW):
  out = {"image_id": image_id, "height": hw[0], "width": hw[1],
         "gt_boxes": np.asarray(boxes, np.float64).reshape(-1, 4),
         "gt_classes": np.asarray(classes, np.int64), "gt_masks": masks}
  if crowd is not None:
    out["gt_iscrowd"] = np.asarray(crowd, bool)
  return out


def _det(boxes, scores, classes, masks=None):
  return {"boxes": np.asarray(boxes, np.float64).reshape(-1, 4),
          "scores": np.asarray(scores, np.float64), "classes": np.asarray(classes, np.int64),
          "masks": masks}


def _box_masks(boxes, hw=HW):
  """Bool masks filling integer boxes (x1, y1, x2, y2): rows y1..y2-1, columns x1..x2-1."""
  out = np.zeros((len(boxes),) + hw, bool)
  for m, (x1, y1, x2, y2) in zip(out, np.asarray(boxes, int)):
    m[y1:y2, x1:x2] = True
  return out


# ------------------------------------------------------------------------------------------------
# coco_metrics


def test_perfect_detections_give_ap_one_and_none_without_gt():
  # 3 objects of classes 0, 1, 0 over two images, each detected exactly (IoU 1 >= every t, no
  # FP): precision 1 at every recall -> AP 1 for classes 0 and 1. Class 2 has no gt: None, and
  # the mean over classes skips it. All boxes are 30 x 30 = 900 px < 32^2: "small" only.
  b1, b2, b3 = [5, 5, 35, 35], [30, 30, 60, 60], [10, 20, 40, 50]
  images = [_img(1, [b1, b2], [0, 1]), _img(2, [b3], [0])]
  dets = [_det([b2, b1], [0.7, 0.9], [1, 0]), _det([b3], [0.5], [0])]
  m = coco_eval.coco_metrics(images, dets, num_classes=3, class_names=["a", "b", "c"],
                             iou_types=("bbox",))["bbox"]
  assert m["map"] == pytest.approx(1.0) and m["map_50"] == pytest.approx(1.0)
  assert m["map_75"] == pytest.approx(1.0) and m["mar_100"] == pytest.approx(1.0)
  assert m["map_small"] == pytest.approx(1.0)
  assert m["map_medium"] is None and m["map_large"] is None
  assert m["per_class_ap"] == pytest.approx({"a": 1.0, "b": 1.0, "c": None})
  assert m["per_class_ap_50"] == pytest.approx({"a": 1.0, "b": 1.0, "c": None})


def test_false_positive_ranked_first_halves_ap():
  # One gt; detections by score: FP (IoU 0) at 0.9, TP (IoU 1) at 0.8. Cumulative precision
  # 0/1, 1/2 at recall 0, 1; made monotone from the right both are 0.5, so all 101 recall
  # thresholds read 0.5: AP50 = 0.5, and (the TP passing every t) AP = 0.5.
  gt = [20, 20, 50, 50]
  images = [_img(7, [gt], [0])]
  fp_first = [_det([[0, 0, 10, 10], gt], [0.9, 0.8], [0, 0])]
  m = coco_eval.coco_metrics(images, fp_first, num_classes=1, iou_types=("bbox",))["bbox"]
  assert m["map_50"] == pytest.approx(0.5) and m["map"] == pytest.approx(0.5)
  assert m["per_class_ap_50"] == pytest.approx({0: 0.5})
  assert m["mar_100"] == pytest.approx(1.0)   # the gt is found at every threshold
  # The FP ranked last comes after recall 1: precision 1 up to recall 1, AP 1.
  tp_first = [_det([[0, 0, 10, 10], gt], [0.8, 0.9], [0, 0])]
  m = coco_eval.coco_metrics(images, tp_first, num_classes=1, iou_types=("bbox",))["bbox"]
  assert m["map_50"] == pytest.approx(1.0)


def test_iou_between_thresholds():
  # gt 40 x 40 = 1600 px; the detection its top 40 x 23.2 = 928 px: IoU 928 / 1600 = 0.58.
  # It matches at t = 0.5, 0.55 (AP 1 there) and at none of 0.6 .. 0.95 (AP 0):
  # AP50 = 1, AP75 = 0, AP = 2 / 10 = 0.2, and AR@100 = 0.2 likewise. Both are "medium".
  images = [_img(1, [[10, 10, 50, 50]], [0])]
  dets = [_det([[10, 10, 50, 33.2]], [0.9], [0])]
  m = coco_eval.coco_metrics(images, dets, num_classes=1, iou_types=("bbox",))["bbox"]
  assert m["map_50"] == pytest.approx(1.0)
  assert m["map_75"] == pytest.approx(0.0)
  assert m["map"] == pytest.approx(0.2)
  assert m["mar_100"] == pytest.approx(0.2)
  assert m["map_medium"] == pytest.approx(0.2) and m["map_small"] is None
  # 40 x 20.8 = 832 px: IoU 0.52 passes t = 0.5 only: per-class AP50 1, AP 1 / 10.
  dets = [_det([[10, 10, 50, 30.8]], [0.9], [0])]
  m = coco_eval.coco_metrics(images, dets, num_classes=1, iou_types=("bbox",))["bbox"]
  assert m["per_class_ap_50"] == pytest.approx({0: 1.0})
  assert m["per_class_ap"] == pytest.approx({0: 0.1})


def test_wrong_class_is_a_false_positive_and_a_miss():
  # gt A (class 0), gt B (class 1). Detections, both class 1: on A at 0.9, on B at 0.8.
  # Class 1: FP then TP -> AP 0.5 (as above). Class 0: its gt is never detected -> AP 0.
  # mAP = (0 + 0.5) / 2 = 0.25.
  a, b = [5, 5, 25, 25], [35, 35, 60, 60]
  images = [_img(1, [a, b], [0, 1])]
  dets = [_det([a, b], [0.9, 0.8], [1, 1])]
  m = coco_eval.coco_metrics(images, dets, num_classes=2, iou_types=("bbox",))["bbox"]
  assert m["per_class_ap_50"] == pytest.approx({0: 0.0, 1: 0.5})
  assert m["per_class_ap"] == pytest.approx({0: 0.0, 1: 0.5})
  assert m["map"] == pytest.approx(0.25) and m["map_50"] == pytest.approx(0.25)


def test_no_detections_gives_zero_not_a_crash():
  # Nothing detected: recall 0 for the classes with gt (AP 0), None for the class without.
  boxes = [[5, 5, 25, 25], [30, 30, 50, 50]]
  images = [_img(1, boxes, [0, 1], masks=_box_masks(boxes)),
            _img(2, np.zeros((0, 4)), [], masks=np.zeros((0,) + HW, bool))]
  empty = _det(np.zeros((0, 4)), [], [], masks=np.zeros((0,) + HW, bool))
  out = coco_eval.coco_metrics(images, [empty, empty], num_classes=3)
  for iou_type in ("bbox", "segm"):
    m = out[iou_type]
    assert m["map"] == 0.0 and m["map_50"] == 0.0 and m["mar_100"] == 0.0
    assert m["per_class_ap"] == {0: 0.0, 1: 0.0, 2: None}
  # Some images with detections, some without: the usual path.
  dets = [_det(boxes[:1], [0.9], [0], masks=_box_masks(boxes[:1])), empty]
  m = coco_eval.coco_metrics(images, dets, num_classes=3)["segm"]
  assert m["per_class_ap"] == pytest.approx({0: 1.0, 1: 0.0, 2: None})
  # No ground truth at all: every number is None.
  m = coco_eval.coco_metrics([images[1]], [empty], num_classes=2)["bbox"]
  assert m["map"] is None and m["per_class_ap_50"] == {0: None, 1: None}


def test_segm_uses_the_masks():
  # gt mask: the 20 x 20 square at rows / columns 10..29 (400 px). A mask equal to it: segm
  # AP 1. The same square shifted 4 columns right: IoU 16 * 20 / (24 * 20) = 2/3, passing
  # t = 0.5, 0.55, 0.6, 0.65 -> AP50 1, AP75 0, AP 4 / 10 = 0.4. Its box is the exact gt
  # box, so bbox AP stays 1: segm is scored on the masks, not on the boxes.
  box = [10, 10, 30, 30]
  gt_mask = _box_masks([box])
  images = [_img(1, [box], [0], masks=gt_mask)]
  m = coco_eval.coco_metrics(images, [_det([box], [0.9], [0], masks=gt_mask)], num_classes=1)
  assert m["segm"]["map"] == pytest.approx(1.0) and m["bbox"]["map"] == pytest.approx(1.0)
  shifted = _box_masks([[14, 10, 34, 30]])
  m = coco_eval.coco_metrics(images, [_det([box], [0.9], [0], masks=shifted)], num_classes=1)
  assert m["segm"]["map_50"] == pytest.approx(1.0)
  assert m["segm"]["map_75"] == pytest.approx(0.0)
  assert m["segm"]["map"] == pytest.approx(0.4)
  assert m["bbox"]["map"] == pytest.approx(1.0)


def test_gt_area_is_the_mask_area_when_given():
  # A 40 x 40 box (1600 px: "medium") whose mask is 20 x 20 (400 px: "small"): with the mask
  # the instance is small for both iou types; without it, its box area makes it medium.
  box = [10, 10, 50, 50]
  mask = _box_masks([[20, 20, 40, 40]])
  dets = [_det([box], [0.9], [0], masks=mask)]
  m = coco_eval.coco_metrics([_img(1, [box], [0], masks=mask)], dets, num_classes=1)
  for iou_type in ("bbox", "segm"):
    assert m[iou_type]["map_small"] == pytest.approx(1.0)
    assert m[iou_type]["map_medium"] is None
  m = coco_eval.coco_metrics([_img(1, [box], [0])], dets, num_classes=1, iou_types=("bbox",))
  assert m["bbox"]["map_small"] is None and m["bbox"]["map_medium"] == pytest.approx(1.0)


def test_crowd_regions_are_ignored():
  # gt A (class 0) and a crowd region C (class 0). A detection inside C (crowd IoU =
  # intersection / detection area = 1) at 0.9 is matched to the crowd and ignored, neither TP
  # nor FP; the TP on A at 0.8 then gives AP 1. Were C left out, that detection would be an
  # FP ranked first: AP 0.5. An undetected crowd region is no miss: AP stays 1 (as a plain gt
  # it would cap the recall at 1/2: precision 1 at recall thresholds 0..0.5, 0 at the other
  # 50, AP 51/101).
  a, c = [2, 2, 22, 22], [30, 30, 62, 62]
  inside = [36, 36, 50, 50]
  masks = _box_masks([a, c])
  crowd_img = [_img(1, [a, c], [0, 0], masks=masks, crowd=[False, True])]
  on_crowd = [_det([inside, a], [0.9, 0.8], [0, 0], masks=_box_masks([inside, a]))]
  m = coco_eval.coco_metrics(crowd_img, on_crowd, num_classes=1)
  assert m["bbox"]["map_50"] == pytest.approx(1.0)
  assert m["segm"]["map_50"] == pytest.approx(1.0)
  m = coco_eval.coco_metrics([_img(1, [a], [0], masks=masks[:1])], on_crowd, num_classes=1)
  assert m["bbox"]["map_50"] == pytest.approx(0.5) and m["segm"]["map_50"] == pytest.approx(0.5)
  only_a = [_det([a], [0.8], [0], masks=_box_masks([a]))]
  m = coco_eval.coco_metrics(crowd_img, only_a, num_classes=1)
  assert m["bbox"]["map_50"] == pytest.approx(1.0) and m["segm"]["map_50"] == pytest.approx(1.0)
  as_plain = [_img(1, [a, c], [0, 0], masks=masks)]
  m = coco_eval.coco_metrics(as_plain, only_a, num_classes=1, iou_types=("bbox",))
  assert m["bbox"]["map_50"] == pytest.approx(51 / 101)


def test_bad_inputs_raise():
  images = [_img(1, [[0, 0, 10, 10]], [0])]
  dets = [_det([[0, 0, 10, 10]], [0.9], [0])]
  with pytest.raises(ValueError, match="gt_masks"):
    coco_eval.coco_metrics(images, dets, num_classes=1)   # segm without gt masks
  with pytest.raises(ValueError, match="outside"):
    coco_eval.coco_metrics(images, [_det([[0, 0, 10, 10]], [0.9], [3])], num_classes=1,
                           iou_types=("bbox",))
  with pytest.raises(ValueError, match="unique"):
    coco_eval.coco_metrics(images * 2, dets * 2, num_classes=1, iou_types=("bbox",))


# ------------------------------------------------------------------------------------------------
# paste_masks


def test_paste_all_ones_mask_fills_the_box():
  # Box (10, 20, 38, 48), 28 px wide and high: column x sits at mask coordinate
  # u = (x + 0.5 - 10) / 28 * 28 - 0.5 = x - 10, so x = 10..37 read cells 0..27 exactly
  # (value 1) and x = 9 (u = -1) and x = 38 (u = 28) read only the zero padding (value 0).
  ones = np.ones((1, 28, 28), np.float32)
  probs = coco_eval.paste_masks(ones, [[10, 20, 38, 48]], HW, threshold=None)
  expected = np.zeros(HW, np.float32)
  expected[20:48, 10:38] = 1
  np.testing.assert_array_equal(probs[0], expected)
  np.testing.assert_array_equal(coco_eval.paste_masks(ones, [[10, 20, 38, 48]], HW)[0],
                                expected.astype(bool))
  # Box edges on pixel centres, (9.5, 19.5, 37.5, 47.5): u = x - 9.5, so x = 9 and x = 37 read
  # half of the edge cell (0.5, the other half is padding), x = 10..36 read 1, and the four
  # corner pixels 0.5 * 0.5 = 0.25. ">= 0.5" (mmdet) keeps the edges, not the corners.
  probs = coco_eval.paste_masks(ones, [[9.5, 19.5, 37.5, 47.5]], HW, threshold=None)[0]
  assert probs[30, 9] == 0.5 and probs[30, 37] == 0.5 and probs[19, 20] == 0.5
  assert probs[47, 20] == 0.5 and probs[19, 9] == 0.25 and probs[47, 37] == 0.25
  assert probs[30, 8] == 0 and probs[30, 38] == 0 and probs[30, 20] == 1
  binary = coco_eval.paste_masks(ones, [[9.5, 19.5, 37.5, 47.5]], HW)[0]
  expected = np.zeros(HW, bool)
  expected[19:48, 9:38] = True
  for y, x in [(19, 9), (19, 37), (47, 9), (47, 37)]:
    expected[y, x] = False
  np.testing.assert_array_equal(binary, expected)
  above = coco_eval.paste_masks(ones, [[9.5, 19.5, 37.5, 47.5]], HW, threshold=0.51)[0]
  np.testing.assert_array_equal(np.argwhere(above).min(0), [20, 10])
  np.testing.assert_array_equal(np.argwhere(above).max(0), [46, 36])


def test_paste_gradient_hand_values():
  # mask[i, j] = j + 1 in box (0, 0, 56, 28): rows y = 0..27 read mask row y exactly; column x
  # sits at u = (x + 0.5) / 56 * 28 - 0.5 = x / 2 - 0.25, value (1 - f) m[k] + f m[k + 1]
  # with k = floor(u), f = u - k, m[-1] = m[28] = 0.
  grad = np.tile(np.arange(1, 29, dtype=np.float32), (28, 1))[None]
  probs = coco_eval.paste_masks(grad, [[0, 0, 56, 28]], (30, 60), threshold=None)[0]
  hand = {0: 0.75 * 1,                  # u = -0.25: 0.75 of cell 0 (value 1), 0.25 padding
          1: 0.75 * 1 + 0.25 * 2,       # u = 0.25
          2: 0.25 * 1 + 0.75 * 2,       # u = 0.75
          10: 0.25 * 5 + 0.75 * 6,      # u = 4.75
          55: 0.75 * 28,                # u = 27.25: 0.75 of cell 27 (value 28)
          56: 0.25 * 28,                # u = 27.75: outside the box, still 0.25 of cell 27
          57: 0.0}                      # u = 28.25: padding only
  for x, v in hand.items():
    for y in (0, 13, 27):
      assert probs[y, x] == pytest.approx(v, abs=1e-5), (y, x)
  assert np.all(probs[28:] == 0)        # u_y = 28, 29: below the mask
  # The transposed case checks the axes: mask[i, j] = i + 1 in box (0, 0, 28, 56).
  probs_t = coco_eval.paste_masks(grad.transpose(0, 2, 1), [[0, 0, 28, 56]], (60, 30),
                                  threshold=None)[0]
  np.testing.assert_allclose(probs_t, probs.T, atol=1e-5)


def test_paste_matches_torch_grid_sample():
  # mmdet's _do_paste_mask itself: normalised coordinates into F.grid_sample (align_corners
  # False, zero padding) over the whole image, on random masks and fractional boxes.
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  n, h, w = 6, 37, 45
  probs = rng.uniform(size=(n, 28, 28)).astype(np.float32)
  xy = rng.uniform(-10, 50, size=(n, 2, 2))
  boxes = np.concatenate([xy.min(1), xy.max(1) + 1], axis=1)
  img_y = (torch.arange(h, dtype=torch.float32) + 0.5)[None]
  img_x = (torch.arange(w, dtype=torch.float32) + 0.5)[None]
  tb = torch.tensor(boxes, dtype=torch.float32)
  gy = (img_y - tb[:, 1:2]) / (tb[:, 3:4] - tb[:, 1:2]) * 2 - 1
  gx = (img_x - tb[:, 0:1]) / (tb[:, 2:3] - tb[:, 0:1]) * 2 - 1
  grid = torch.stack([gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)], dim=3)
  ref = torch.nn.functional.grid_sample(torch.tensor(probs)[:, None], grid,
                                        align_corners=False)[:, 0].numpy()
  ours = coco_eval.paste_masks(probs, boxes, (h, w), threshold=None)
  np.testing.assert_allclose(ours, ref, atol=1e-5)
  binary = coco_eval.paste_masks(probs, boxes, (h, w))
  decided = np.abs(ref - 0.5) > 1e-4     # leave float ties at the threshold out
  np.testing.assert_array_equal(binary[decided], (ref >= 0.5)[decided])


def test_paste_only_inside_the_image_on_the_canvas():
  # A box running past the right and bottom edges of a 30 x 40 image on a 50 x 60 canvas: the
  # image region equals a paste into a 30 x 40 image, the rest of the canvas is False.
  ones = np.ones((2, 28, 28), np.float32)
  boxes = [[20, 10, 76, 38], [5, 5, 5, 20]]   # the second has no width: an empty mask
  out = coco_eval.paste_masks(ones, boxes, (30, 40), canvas_hw=(50, 60))
  assert out.shape == (2, 50, 60) and out.dtype == bool
  np.testing.assert_array_equal(out[:, :30, :40], coco_eval.paste_masks(ones, boxes, (30, 40)))
  assert not out[:, 30:].any() and not out[:, :, 40:].any()
  # Box (20, 10, 76, 38): rows u = y - 10; columns u = (x + 0.5 - 20) / 2 - 0.5, so x = 19
  # (u = -0.75, 0.25) is out and x = 20 (u = -0.25, 0.75) is in.
  assert out[0, 10:30, 20:40].all() and not out[0, :, :20].any() and not out[0, :10].any()
  assert not out[1].any()
  assert coco_eval.paste_masks(np.zeros((0, 28, 28)), np.zeros((0, 4)), (30, 40)).shape == (
      0, 30, 40)


# ------------------------------------------------------------------------------------------------
# From padded arrays


def test_detections_from_arrays_drops_padding_and_rescales():
  b, d = 3, 4
  boxes = np.zeros((b, d, 4), np.float32)
  boxes[0, 0] = [20, 40, 76, 96]     # canvas pixels, scale 2 -> (10, 20, 38, 48)
  boxes[0, 2] = [0, 0, 8, 8]
  boxes[1, 1] = [4, 4, 32, 32]       # scale 1
  scores = np.arange(b * d, dtype=np.float32).reshape(b, d) / 20
  classes = np.arange(b * d).reshape(b, d) % 3
  valid = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 1, 1]], bool)
  mask_probs = np.ones((b, d, 28, 28), np.float32)
  out = coco_eval.detections_from_arrays(
      boxes, scores, classes, valid, image_id=[11, 12, 13], image_hw=[[128, 128], [64, 48],
                                                                      [64, 64]],
      mask=[1, 1, 0], mask_probs=mask_probs, scale=[[2, 2], [1, 1], [1, 1]])
  assert [o["image_id"] for o in out] == [11, 12]     # example 13 is padding
  np.testing.assert_allclose(out[0]["boxes"], [[10, 20, 38, 48], [0, 0, 4, 4]])
  np.testing.assert_allclose(out[0]["scores"], scores[0, [0, 2]])
  np.testing.assert_array_equal(out[0]["classes"], classes[0, [0, 2]])
  np.testing.assert_allclose(out[1]["boxes"], [[4, 4, 32, 32]])
  assert out[0]["masks"].shape == (2, 64, 64)         # the original frame, 128 / 2
  assert out[1]["masks"].shape == (1, 64, 48)
  expected = np.zeros((64, 64), bool)
  expected[20:48, 10:38] = True                       # the all-ones mask fills its box
  np.testing.assert_array_equal(out[0]["masks"][0], expected)
  no_masks = coco_eval.detections_from_arrays(boxes, scores, classes, valid, image_id=[1, 2, 3],
                                              image_hw=[64, 64])
  assert len(no_masks) == 3 and no_masks[0]["masks"] is None
  assert len(no_masks[2]["boxes"]) == 4 and len(no_masks[1]["boxes"]) == 1


def test_ground_truth_from_arrays_strided_masks_and_crowd():
  # Canvas 64 x 64, masks at stride 4 (16 x 16). Slot 0: a valid instance whose mask is cell
  # (1, 2) -> canvas rows 4..7, columns 8..11. Slot 1: a crowd region (gt_valid False,
  # gt_iscrowd True). Slot 2: invalid, not crowd (dropped); slot 3: padding (class -1).
  gt_boxes = np.zeros((2, 4, 4), np.float32)
  gt_boxes[:, 0] = [8, 4, 12, 8]
  gt_boxes[:, 1] = [32, 32, 64, 64]
  gt_classes = np.array([[2, 0, 1, -1]] * 2)
  gt_valid = np.array([[1, 0, 0, 0]] * 2, bool)
  gt_crowd = np.array([[0, 1, 0, 0]] * 2, bool)
  gt_masks = np.zeros((2, 4, 16, 16), np.uint8)
  gt_masks[:, 0, 1, 2] = 1
  gt_masks[:, 1, 8:, 8:] = 1
  out = coco_eval.ground_truth_from_arrays(
      gt_boxes, gt_classes, gt_valid, image_id=[5, 6], image_hw=[[64, 64], [64, 64]],
      mask=[1, 1], gt_masks=gt_masks, gt_iscrowd=gt_crowd, mask_stride=4,
      scale=[[1, 1], [2, 2]])
  first, second = out
  assert (first["height"], first["width"]) == (64, 64)
  np.testing.assert_array_equal(first["gt_classes"], [2, 0])
  np.testing.assert_array_equal(first["gt_iscrowd"], [False, True])
  expected = np.zeros((64, 64), bool)
  expected[4:8, 8:12] = True
  np.testing.assert_array_equal(first["gt_masks"][0], expected)
  assert first["gt_masks"][1].sum() == 32 * 32
  # Scale 2: a 32 x 32 original frame; pixel y reads canvas pixel 2 y, mask row 2 y // 4
  # = y // 2 -> rows 2..3, columns 4..5, and boxes halved.
  assert (second["height"], second["width"]) == (32, 32)
  expected = np.zeros((32, 32), bool)
  expected[2:4, 4:6] = True
  np.testing.assert_array_equal(second["gt_masks"][0], expected)
  np.testing.assert_allclose(second["gt_boxes"], [[4, 2, 6, 4], [16, 16, 32, 32]])
  with pytest.raises(ValueError, match="stride"):
    coco_eval.ground_truth_from_arrays(gt_boxes, gt_classes, gt_valid, image_id=[5, 6],
                                       image_hw=[64, 64], gt_masks=gt_masks, mask_stride=2)


def test_arrays_round_trip_through_coco_metrics():
  # Detections equal to the ground truth (the gt boxes as detections, all-ones 28 x 28 masks
  # pasted into boxes that are 28 px multiples, equal to the box-filling gt masks): AP 1 for
  # both iou types, and the padding example (id 3) takes no part.
  boxes = np.array([[[0, 0, 28, 28], [28, 0, 56, 56]], [[0, 28, 56, 56], [0, 0, 0, 0]],
                    [[0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
  classes = np.array([[0, 1], [1, -1], [-1, -1]])
  valid = classes >= 0
  gt_masks = np.stack([_box_masks(b) for b in boxes])
  gt_masks[~valid] = False
  common = {"image_id": [1, 2, 3], "image_hw": [64, 64], "mask": [1, 1, 0]}
  images = coco_eval.ground_truth_from_arrays(boxes, classes, valid, gt_masks=gt_masks, **common)
  dets = coco_eval.detections_from_arrays(boxes, np.full((3, 2), 0.9), classes, valid,
                                          mask_probs=np.ones((3, 2, 28, 28)), **common)
  assert len(images) == len(dets) == 2
  m = coco_eval.coco_metrics(images, dets, num_classes=2)
  assert m["bbox"]["map"] == pytest.approx(1.0) and m["segm"]["map"] == pytest.approx(1.0)
  dets[1]["scores"][:] = 0.0
  dets[1]["boxes"][:] += 30      # now misses its gt and is an FP of class 1, ranked last
  m = coco_eval.coco_metrics(images, dets, num_classes=2, iou_types=("bbox",))["bbox"]
  # Class 0: AP 1. Class 1: TP at 0.9 (recall 1/2, precision 1), then the FP: AP50 =
  # 51 / 101 (recall thresholds 0..0.5 read 1, the rest 0). mAP50 = (1 + 51/101) / 2.
  assert m["per_class_ap_50"] == pytest.approx({0: 1.0, 1: 51 / 101})
  assert m["map_50"] == pytest.approx((1 + 51 / 101) / 2)


def test_arrays_to_coco_in_the_input_or_the_original_frame():
  # One image on a 64 x 64 canvas, real region 64 x 48, scale 2 (original 32 x 24); one gt at
  # canvas (8, 8, 36, 36) with its mask at stride 4, one valid detection equal to it.
  gt_masks = np.zeros((1, 2, 16, 16), np.uint8)
  gt_masks[0, 0, 2:9, 2:9] = 1
  arrays = {"boxes": np.array([[[8, 8, 36, 36], [0, 0, 0, 0]]], np.float32),
            "scores": np.array([[0.9, 0.0]]), "classes": np.array([[0, -1]]),
            "valid": np.array([[True, False]]), "mask_probs": np.ones((1, 2, 28, 28)),
            "image_hw": np.array([[64, 48]]), "gt_boxes": np.array([[[8, 8, 36, 36], [0] * 4]]),
            "gt_classes": np.array([[0, -1]]), "gt_valid": np.array([[True, False]]),
            "gt_masks": gt_masks, "gt_iscrowd": np.zeros((1, 2), bool), "mask": np.ones(1),
            "image_id": np.array([42]), "scale": np.array([[2.0, 2.0]])}
  images, dets = coco_eval.arrays_to_coco(arrays, mask_stride=4, rle=False)
  assert (images[0]["image_id"], images[0]["height"], images[0]["width"]) == (42, 64, 48)
  assert images[0]["gt_masks"].shape == (1, 64, 48) and images[0]["gt_masks"].sum() == 28 * 28
  assert dets[0]["masks"].shape == (1, 64, 48) and dets[0]["masks"].sum() == 28 * 28
  images, dets = coco_eval.arrays_to_coco(arrays, mask_stride=4, rescale=True, rle=False)
  assert (images[0]["height"], images[0]["width"]) == (32, 24)
  np.testing.assert_allclose(dets[0]["boxes"], [[4, 4, 18, 18]])
  assert images[0]["gt_masks"].sum() == dets[0]["masks"].sum() == 14 * 14
  m = coco_eval.coco_metrics(images, dets, num_classes=1)
  assert m["bbox"]["map"] == pytest.approx(1.0) and m["segm"]["map"] == pytest.approx(1.0)
  # By default the masks come as COCO RLEs (memory), and evaluate the same.
  images_rle, dets_rle = coco_eval.arrays_to_coco(arrays, mask_stride=4, rescale=True)
  assert isinstance(dets_rle[0]["masks"], list) and dets_rle[0]["masks"][0]["size"] == [32, 24]
  assert coco_eval.coco_metrics(images_rle, dets_rle, num_classes=1) == m
  # Rows 4..17 moved to 8..21: IoU 10 / 18 = 0.556, passing t = 0.5, 0.55 only.
  dets[0]["masks"] = np.roll(dets[0]["masks"], 4, axis=1)
  images_rle[0]["gt_masks"] = coco_eval.encode_masks(images[0]["gt_masks"])
  dets_rle[0]["masks"] = coco_eval.encode_masks(dets[0]["masks"])
  m = coco_eval.coco_metrics(images_rle, dets_rle, num_classes=1)["segm"]
  assert m["map_50"] == pytest.approx(1.0) and m["map"] == pytest.approx(0.2)
  assert m == coco_eval.coco_metrics(images, dets, num_classes=1)["segm"]
