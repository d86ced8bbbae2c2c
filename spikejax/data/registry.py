"""The one table of data sets: a ``DatasetSpec`` per image or event data set.

Public API::

  spec = get_spec(name)     # ValueError naming the registered ones (and a close match)
  list_datasets(kind=None)  # sorted names; kind 'image' | 'event' | 'segmentation' | 'detection'
  register(spec, replace=False) / unregister(name)
  DATASETS                  # read-only name -> DatasetSpec view of the table (live)
  SPECS, EVENT_SPECS        # the same, image / event sets only

A new data set is one ``register(DatasetSpec(...))`` with a ``builder`` that returns a source
(``spikejax.data.sources``): ``get_dataset(name, ...)`` then reads it with the pipeline of its
``kind``; no pipeline module changes. This module imports no pipeline; pipelines get the spec
from ``spikejax.data.get_dataset``.

The built-in sets (bottom of this file): ``fashion_mnist``, ``cifar10``, ``imagenet2012``
(image), ``event_fashion_mnist``, ``cifar10_dvs``, ``har_dvs`` (event; spec section 6),
``fashion_mnist_scenes(_tiny)``, ``scene_parse150(_mock)`` (segmentation),
``fashion_mnist_scenes_det(_tiny)``, ``coco``, ``coco_mock`` (detection; addendum B.2).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Iterator, Mapping

from spikejax.data import fashion_mnist as fmnist
from spikejax.data import transforms as T
from spikejax.data.augment import AugmentConfig
from spikejax.data.det_augment import DetPipelineConfig, coco_pipeline
from spikejax.data.seg_augment import SegPipelineConfig
from spikejax.data.sources import Source, TfdsBuilder, open_tfds_source

KINDS = ("image", "event", "segmentation", "detection")
#: kinds whose examples are images (normalised with the spec's mean/std)
_PIXEL_KINDS = ("image", "segmentation", "detection")
FITS = ("pad", "resize", "center_crop")
EVENT_FORMATS = ("events", "frame_images")

#: ``builder(spec, split, *, data_dir, download) -> Source`` (``spikejax.data.sources``).
Builder = Callable[..., Source]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Static facts about one data set and how to read it.

  Attributes:
    name: registry key (for tfds sets also the tfds name unless the builder says otherwise).
    kind: ``'image'`` (batches ``image`` float32 ``[B, S, S, C]``) or ``'event'`` (batches
      ``image`` float32 ``[B, T, S, S, 2]``: T frames of OFF/ON channels); ``'segmentation'``
      (``spikejax.data.seg_pipeline``), ``'detection'`` (``spikejax.data.det_pipeline``:
      ``input_shape`` is the default canvas).
    num_classes: labels are ``0 .. num_classes - 1``; the classifier's output width.
    input_shape: ``(H, W, C)`` of ONE model input example at the default size (H == W).
      Image sets: the image ``get_dataset`` yields with ``image_size=None, channels=None``
      (for in-memory sets also the stored size); ``image_size=S`` makes it ``(S, S, C)``,
      ``channels=3`` replicates a grey channel. Event sets: ONE frame ``(S, S, 2)``; an
      example is ``(T, S, S, 2)`` with ``T = frames.time_steps`` and ``S = frames.size`` (or
      ``image_size``) when given. ``example_shape(...)`` applies these overrides.
    builder: ``builder(spec, split, *, data_dir, download) -> Source``; e.g. ``TfdsBuilder()``
      for a tfds data set, or a function returning ``sources.ArraySource(images, labels)``.
    mean, std: per-channel (or one shared) normalization of pixels scaled to [0, 1]; image
      sets only (event frames are counts or 0/1, not normalized).
    augment: the default training augmentation (``get_dataset(augment='default')``).
    splits: known split sizes ``{split: examples}`` for reference; empty where unknown. The
      pipeline always counts the source itself.
    in_memory: image sets: decode the whole shard once into uint8 arrays (small sets).
    fit: image sets: how images reach ``image_size``: ``'pad'`` (centered zero pad),
      ``'resize'`` or ``'center_crop'`` (resize the shorter side to ``S / crop_pct``, crop).
    sensor_size: event sets: the sensor's ``(width, height)`` (a source's ``sensor_size``
      metadata, when present, wins).
    event_format: event sets: records hold ``'events'`` (streams binned into frames at read
      time) or ``'frame_images'`` (pre-rendered frames; the HAR-DVS clip of spec section 6.1).
    seg: segmentation sets: the pipeline (``seg_augment.SegPipelineConfig``: label mapping,
      the default train augmentation, the eval resize).
    label_feature: segmentation sets: the record key of the class map.
    det: detection sets: the pipeline (``det_augment.DetPipelineConfig``: instance rows,
      mask stride, canvas, the default train augmentation, the eval resize).
    class_names: the names of classes ``0 .. num_classes - 1`` where known (empty: unknown).
    description: one line for listings.
  """
  name: str
  kind: str
  num_classes: int
  input_shape: tuple[int, int, int]
  builder: Builder
  mean: tuple[float, ...] = ()
  std: tuple[float, ...] = ()
  augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig.none)
  splits: Mapping[str, int] = dataclasses.field(default_factory=dict)
  in_memory: bool = False
  fit: str = "resize"
  sensor_size: tuple[int, int] | None = None
  event_format: str = "events"
  seg: SegPipelineConfig = dataclasses.field(default_factory=SegPipelineConfig)
  label_feature: str = "segmentation"
  det: DetPipelineConfig = dataclasses.field(default_factory=DetPipelineConfig)
  class_names: tuple[str, ...] = ()
  description: str = ""

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)
    set_("input_shape", tuple(int(v) for v in self.input_shape))
    set_("mean", tuple(float(v) for v in self.mean))
    set_("std", tuple(float(v) for v in self.std))
    set_("splits", dict(self.splits))
    set_("class_names", tuple(str(n) for n in self.class_names))
    if self.sensor_size is not None:
      set_("sensor_size", tuple(int(v) for v in self.sensor_size))
    where = f"DatasetSpec {self.name!r}"
    if not isinstance(self.name, str) or not self.name:
      raise ValueError(f"{where}: name must be a non-empty string")
    if self.kind not in KINDS:
      raise ValueError(f"{where}: kind must be one of {KINDS}, got {self.kind!r}")
    if not isinstance(self.num_classes, int) or self.num_classes < 1:
      raise ValueError(f"{where}: num_classes must be an integer >= 1, got {self.num_classes!r}")
    h, w, c = self.input_shape if len(self.input_shape) == 3 else (0, 0, 0)
    if min(h, w, c) < 1 or h != w:
      raise ValueError(f"{where}: input_shape must be (S, S, C) with S, C >= 1, got "
                       f"{self.input_shape}")
    if not callable(self.builder):
      raise ValueError(f"{where}: builder must be callable, got {self.builder!r}")
    if not isinstance(self.augment, AugmentConfig):
      raise ValueError(f"{where}: augment must be an AugmentConfig, got {self.augment!r}")
    if any(not isinstance(n, int) or n < 0 for n in self.splits.values()):
      raise ValueError(f"{where}: split sizes must be integers >= 0, got {self.splits}")
    if self.class_names and len(self.class_names) != self.num_classes:
      raise ValueError(f"{where}: {len(self.class_names)} class_names for {self.num_classes} "
                       "classes")
    if self.kind in _PIXEL_KINDS:
      for key in ("mean", "std"):
        if len(getattr(self, key)) not in (1, c):
          raise ValueError(f"{where}: {key} needs 1 or {c} values, got {getattr(self, key)}")
      if any(s <= 0 for s in self.std):
        raise ValueError(f"{where}: std must be > 0, got {self.std}")
      if self.fit not in FITS:
        raise ValueError(f"{where}: fit must be one of {FITS}, got {self.fit!r}")
    else:
      if c != 2:
        raise ValueError(f"{where}: event frames have 2 channels (OFF, ON), got input_shape "
                         f"{self.input_shape}")
      if self.sensor_size is None or len(self.sensor_size) != 2 or min(self.sensor_size) < 1:
        raise ValueError(f"{where}: event sets need sensor_size (width, height), got "
                         f"{self.sensor_size!r}")
      if self.event_format not in EVENT_FORMATS:
        raise ValueError(f"{where}: event_format must be one of {EVENT_FORMATS}, got "
                         f"{self.event_format!r}")
      if self.in_memory:
        raise ValueError(f"{where}: event sets are read per batch (in_memory=False)")

  @property
  def image_size(self) -> int:
    """Default side S of an image (image sets) or a frame (event sets)."""
    return self.input_shape[0]

  @property
  def channels(self) -> int:
    """Channels of the stored images (image sets) or frames (2, event sets)."""
    return self.input_shape[2]

  def example_shape(self, image_size: int | None = None, channels: int | None = None,
                    time_steps: int | None = None) -> tuple[int, ...]:
    """Shape of one example of ``get_dataset``'s ``image`` with these overrides: image sets
    ``(S, S, C)``; event sets ``(T, S, S, 2)`` (``time_steps`` required)."""
    s = image_size or self.image_size
    if self.kind in _PIXEL_KINDS:
      return (s, s, channels or self.channels)
    if time_steps is None:
      raise ValueError(f"{self.name}: the shape of an event example needs time_steps "
                       "(frames.time_steps)")
    return (int(time_steps), s, s, 2)


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec, *, replace: bool = False) -> DatasetSpec:
  """Add ``spec`` to the table under ``spec.name``; a taken name is a ``ValueError`` unless
  ``replace``. Returns ``spec``."""
  if not isinstance(spec, DatasetSpec):
    raise TypeError(f"register takes a DatasetSpec, got {type(spec).__name__}")
  if spec.name in _REGISTRY and not replace:
    raise ValueError(f"data set {spec.name!r} is already registered (pass replace=True)")
  _REGISTRY[spec.name] = spec
  return spec


def unregister(name: str) -> DatasetSpec:
  """Remove ``name`` from the table and return its spec."""
  get_spec(name)
  return _REGISTRY.pop(name)


def list_datasets(kind: str | None = None) -> list[str]:
  """Sorted names of the registered data sets (of ``kind`` when given)."""
  if kind is not None and kind not in KINDS:
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
  return sorted(n for n, s in _REGISTRY.items() if kind is None or s.kind == kind)


def get_spec(name: str) -> DatasetSpec:
  """The spec of data set ``name``; ``ValueError`` listing the registered ones otherwise."""
  if isinstance(name, str) and name in _REGISTRY:
    return _REGISTRY[name]
  known = list_datasets()
  close = difflib.get_close_matches(str(name), known, n=1)
  hint = f" Did you mean {close[0]!r}?" if close else ""
  raise ValueError(f"unsupported dataset {name!r}; registered: {', '.join(known)}.{hint}")


class _View(Mapping):
  """Read-only, live ``name -> DatasetSpec`` view of the table (of one ``kind``)."""

  def __init__(self, kind: str | None = None):
    self._kind = kind

  def __getitem__(self, name: str) -> DatasetSpec:
    spec = _REGISTRY.get(name)
    if spec is None or (self._kind is not None and spec.kind != self._kind):
      raise KeyError(name)
    return spec

  def __iter__(self) -> Iterator[str]:
    return iter(list_datasets(self._kind))

  def __len__(self) -> int:
    return len(list_datasets(self._kind))

  def __repr__(self) -> str:
    return f"<data sets{'' if self._kind is None else ' of kind ' + self._kind}: {list(self)}>"


DATASETS: Mapping[str, DatasetSpec] = _View()
SPECS: Mapping[str, DatasetSpec] = _View("image")
EVENT_SPECS: Mapping[str, DatasetSpec] = _View("event")


# --------------------------------------------------------------------------- built-in sets


def _import_event_datasets() -> Any:
  """Registers the tfds builder ``event_fashion_mnist``."""
  from spikejax.data import event_datasets  # pylint: disable=import-outside-toplevel
  return event_datasets


def _import_dvs_datasets() -> Any:
  """Registers the tfds builders ``cifar10_dvs`` and ``har_dvs``."""
  from spikejax.data import dvs_datasets  # pylint: disable=import-outside-toplevel
  return dvs_datasets


def _prepare_event_fashion_mnist(data_dir: str | None) -> str:
  return _import_event_datasets().prepare_event_fashion_mnist(data_dir)


def _dvs_hint(name: str) -> str:
  return (f"`tfds build {name} --manual_dir=<your copy> --file_format=array_record "
          "--imports spikejax.data.dvs_datasets`")


register(DatasetSpec(
    name="fashion_mnist", kind="image", num_classes=10, input_shape=(28, 28, 1),
    builder=TfdsBuilder(prepare=fmnist.prepare_fashion_mnist, hint=fmnist.PREPARE_HINT),
    mean=(fmnist.MEAN,), std=(fmnist.STD,),
    augment=AugmentConfig(crop="pad", padding=2, flip=True, label_smoothing=0.1),
    splits={"train": 60000, "test": 10000}, in_memory=True, fit="pad",
    description="Fashion-MNIST, built from the local Debian files (no network)"))

register(DatasetSpec(
    name="cifar10", kind="image", num_classes=10, input_shape=(32, 32, 3),
    builder=TfdsBuilder(), mean=T.CIFAR10_MEAN, std=T.CIFAR10_STD,
    augment=AugmentConfig(crop="pad", padding=4, flip=True, label_smoothing=0.1),
    splits={"train": 50000, "test": 10000}, in_memory=True, fit="resize",
    description="CIFAR-10 (tfds)"))

register(DatasetSpec(
    name="imagenet2012", kind="image", num_classes=1000, input_shape=(224, 224, 3),
    builder=TfdsBuilder(), mean=T.IMAGENET_MEAN, std=T.IMAGENET_STD,
    # DeiT/timm recipe: RandomResizedCrop + flip, RandAugment, random erasing, mixup/cutmix.
    augment=AugmentConfig(crop="rrc", flip=True, randaugment="rand-m9-mstd0.5-inc1",
                          reprob=0.25, mixup=0.8, cutmix=1.0, label_smoothing=0.1),
    splits={"train": 1281167, "validation": 50000}, in_memory=False, fit="center_crop",
    description="ImageNet-1k (tfds imagenet2012), decoded per batch"))

register(DatasetSpec(
    name="event_fashion_mnist", kind="event", num_classes=10, input_shape=(34, 34, 2),
    builder=TfdsBuilder(setup=_import_event_datasets, prepare=_prepare_event_fashion_mnist,
                        hint="spikejax.data.event_datasets.prepare_event_fashion_mnist("
                             "data_dir)"),
    # none: short budgets underfit, as for Fashion-MNIST
    splits={"train": 60000, "test": 10000}, sensor_size=(34, 34),
    description="Fashion-MNIST as EMULATED event streams (spikejax.data.emulate)"))

register(DatasetSpec(
    name="cifar10_dvs", kind="event", num_classes=10, input_shape=(128, 128, 2),
    builder=TfdsBuilder(setup=_import_dvs_datasets, manual=True, hint=_dvs_hint("cifar10_dvs")),
    # flip + random shift of up to 5 px (the official loader's roll, spec section 6.4)
    augment=AugmentConfig(crop="pad", padding=5, flip=True),
    # the default train_fraction 0.9: 900 + 100 recordings of each class
    splits={"train": 9000, "test": 1000}, sensor_size=(128, 128),
    description="CIFAR10-DVS recordings (DVS128), manual download"))

register(DatasetSpec(
    name="har_dvs", kind="event", num_classes=300, input_shape=(224, 224, 2),
    builder=TfdsBuilder(setup=_import_dvs_datasets, manual=True, hint=_dvs_hint("har_dvs")),
    # label smoothing 0.1 (spec section 6.3); the clip flips every frame itself (section 6.1)
    augment=AugmentConfig(crop="none", flip=False, label_smoothing=0.1),
    sensor_size=(346, 260), event_format="frame_images",
    description="HAR-DVS pre-rendered DAVIS346 frames (the official clip), manual download"))


def _import_seg_datasets() -> Any:
  """Registers the tfds builder ``fashion_mnist_scenes``."""
  from spikejax.data import seg_datasets  # pylint: disable=import-outside-toplevel
  return seg_datasets


def _scenes_builder(config: str) -> TfdsBuilder:
  def prepare(data_dir: str | None) -> str:
    return _import_seg_datasets().prepare_fashion_mnist_scenes(data_dir, config=config)
  return TfdsBuilder(tfds_name=f"fashion_mnist_scenes/{config}", setup=_import_seg_datasets,
                     prepare=prepare, hint="spikejax.data.seg_datasets."
                     f"prepare_fashion_mnist_scenes(data_dir, config={config!r})")


for _name, _config, _splits in [("fashion_mnist_scenes", "s96", {"train": 60000, "test": 10000}),
                                ("fashion_mnist_scenes_tiny", "tiny", {"train": 256, "test": 64})]:
  register(DatasetSpec(
      name=_name, kind="segmentation", num_classes=11, input_shape=(96, 96, 1),
      builder=_scenes_builder(_config), mean=(fmnist.MEAN,), std=(fmnist.STD,),
      seg=SegPipelineConfig(flip=True), splits=_splits,
      description=f"96x96 scenes of 1-4 Fashion-MNIST garments ({_splits['train']} + "
                  f"{_splits['test']}): class maps (background + 10), instances, boxes; built "
                  "locally"))

register(DatasetSpec(
    name="scene_parse150", kind="segmentation", num_classes=150, input_shape=(512, 512, 3),
    builder=TfdsBuilder(manual=True, hint="`tfds build scene_parse150 --manual_dir=<ADEChallenge"
                                          "Data2016.zip's directory> --file_format=array_record`"),
    mean=T.IMAGENET_MEAN, std=T.IMAGENET_STD, label_feature="annotation",
    # mmseg's ADE20K recipe (addendum B.3): reduce_zero_label, RandomResize (2048, 512) x
    # 0.5-2.0, RandomCrop 512 (cat_max_ratio 0.75), flip, PhotoMetricDistortion; eval resized
    # to (2048, 512) keep-ratio, padded onto a 1024 x 1024 canvas (up to 2:1 either way)
    seg=SegPipelineConfig(reduce_zero_label=True, train_scale=(2048, 512),
                          ratio_range=(0.5, 2.0), crop_size=512, cat_max_ratio=0.75, flip=True,
                          photometric=True, eval_scale=(2048, 512), eval_size=(1024, 1024)),
    splits={"train": 20210, "validation": 2000},
    description="ADE20K SceneParsing (tfds scene_parse150; 150 classes), manual download"))


def _mock_scene_parse150(spec: DatasetSpec, split: str, **kwargs) -> Source:
  return _import_seg_datasets().mock_scene_parse150(spec, split, **kwargs)


register(DatasetSpec(
    name="scene_parse150_mock", kind="segmentation", num_classes=150, input_shape=(64, 64, 3),
    builder=_mock_scene_parse150, mean=T.IMAGENET_MEAN, std=T.IMAGENET_STD,
    label_feature="annotation",
    seg=SegPipelineConfig(reduce_zero_label=True, train_scale=(128, 32), ratio_range=(0.5, 2.0),
                          crop_size=64, cat_max_ratio=0.75, flip=True, photometric=True,
                          eval_scale=(128, 64), eval_size=(128, 128)),
    splits={"train": 24, "validation": 4},
    description="24 + 4 synthetic ADE20K-like records in memory (smoke runs and tests)"))


# --------------------------------------------------------------------------- detection sets

FMNIST_CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot")
#: COCO 2017's 80 categories in category-id order (tfds ``objects/label`` 0..79).
COCO_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")


def _scenes_det_builder(config: str) -> Builder:
  """The segmentation scenes' tfds set, read with the image and the instance map encoded."""
  seg = _scenes_builder(config)

  def build(spec, split: str, *, data_dir: str | None = None, download: bool = True) -> Source:
    del spec
    seg.setup()
    return open_tfds_source(seg.tfds_name, split, data_dir=data_dir, download=download,
                            images=True, prepare=seg.prepare, hint=seg.hint,
                            encoded=("instances", "segmentation"))
  return build


for _name, _config, _splits in [("fashion_mnist_scenes_det", "s96",
                                 {"train": 60000, "test": 10000}),
                                ("fashion_mnist_scenes_det_tiny", "tiny",
                                 {"train": 256, "test": 64})]:
  register(DatasetSpec(
      name=_name, kind="detection", num_classes=10, input_shape=(96, 96, 1),
      builder=_scenes_det_builder(_config), mean=(fmnist.MEAN,), std=(fmnist.STD,),
      det=DetPipelineConfig(max_instances=4, mask_stride=1, flip=True), splits=_splits,
      class_names=FMNIST_CLASS_NAMES,
      description=f"the fashion_mnist_scenes{'_tiny' if _config == 'tiny' else ''} set as "
                  "instances: 1-4 garments (10 classes), boxes and masks; test scenes from the "
                  "test garments only"))


def _coco_builder(spec, split: str, *, data_dir: str | None = None,
                  download: bool = True) -> Source:
  del spec
  return open_tfds_source(
      "coco/2017", split, data_dir=data_dir, download=download, images=True, manual=True,
      hint="`tfds build coco/2017 --file_format=array_record` on a machine with the network "
           "(then copy the data dir here)")


register(DatasetSpec(
    name="coco", kind="detection", num_classes=80, input_shape=(1344, 1344, 3),
    builder=_coco_builder, mean=T.IMAGENET_MEAN, std=T.IMAGENET_STD,
    # mmdet's mask-rcnn_sdeformer_fpn_1x_coco (addendum B.2, trap 4): Resize (853, 512),
    # flip, DETR-style RandomChoice (multi-scale | resize, crop (384, 600), multi-scale);
    # test Resize (1333, 800); a 1344 x 1344 canvas, masks at stride 4
    det=coco_pipeline(), splits={"train": 118287, "validation": 5000},
    class_names=COCO_CLASS_NAMES,
    description="COCO 2017 (tfds coco/2017, prepared elsewhere; masks from the official "
                "instances_*2017.json)"))


def _mock_coco(spec: DatasetSpec, split: str, **kwargs) -> Source:
  return _import_seg_datasets().mock_coco(spec, split, **kwargs)


register(DatasetSpec(
    name="coco_mock", kind="detection", num_classes=80, input_shape=(128, 128, 3),
    builder=_mock_coco, mean=T.IMAGENET_MEAN, std=T.IMAGENET_STD,
    # the official pipeline's structure at about 1/10 of its sizes (canvas 128)
    det=DetPipelineConfig(max_instances=8, mask_stride=4, canvas=(128, 128), flip=True,
                          initial_resize=True, initial_scale=(80, 48),
                          train_scales=tuple((126, s) for s in (48, 56, 64, 72, 76)),
                          crop_scales=((400, 40), (400, 48), (400, 56)), crop_size=(36, 56),
                          eval_scale=(126, 76)),
    splits={"train": 8, "validation": 4}, class_names=COCO_CLASS_NAMES,
    description="8 + 4 synthetic COCO-like records in memory, masks as RLEs (smoke runs and "
                "tests)"))
