"""Input pipelines: tfds datasets -> per-process sharded, deterministic numpy batches.

Public API::

  ds = spikejax.data.get_dataset(
      name,                     # a registered data set: list_datasets()
      split='train',            # any tfds split string ('test', 'validation', 'train[:90%]')
      batch_size=256,           # GLOBAL batch; each process yields batch_size // process_count
      data_dir=None,            # tfds data dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)
      train=True,               # shuffle per epoch + augment + drop remainder | ordered, padded
      seed=0,
      image_size=None,          # default: get_spec(name).input_shape[0]; fashion_mnist 32: pad
      augment='default',        # 'default' (spec.augment) | 'none' | 'flip' | None | AugmentConfig | mapping
      process_index=None, process_count=None,   # default jax.process_index()/process_count()
      channels=None,            # 3: replicate Fashion-MNIST's grey channel
      crop_pct=224/232, interpolation='bicubic', num_epochs=None, download=True,
      num_workers=None, prefetch=2,
      frames=None)              # event sets: FrameConfig / mapping (time_steps, split_by, ...)
  for batch in ds:   # train: endless (or num_epochs) epochs; eval: one pass
    batch['image']   # float32 [B, S, S, C], normalized (dataset mean/std)
    batch['label']   # int32 [B]
    batch['target']  # train only: float32 [B, num_classes] soft targets (smoothing, mixup/cutmix)
    batch['mask']    # eval only: float32 [B], 0 for the padding of the last batch
  ds.num_examples, ds.num_local_examples, ds.steps_per_epoch, ds.num_classes, ds.image_shape
  ds.get_batch(epoch, step)          # pure function of (seed, process, epoch, step)
  ds.iterate(start_step), ds.iter_epoch(epoch)

  Event sets (kind 'event'): batch['image'] float32 [B, T, S, S, 2] (batch-major);
  spikejax.data.model_input(x) gives the models' time-major [T, B, ...].
  Segmentation sets: spikejax.data.seg_pipeline; detection sets (kind 'detection':
  fashion_mnist_scenes_det(_tiny), coco, coco_mock): spikejax.data.det_pipeline's batch
  contract (image, image_hw, gt_boxes, gt_classes, gt_valid, gt_iscrowd, gt_masks; eval also
  mask, scale, image_id), pipeline options DetPipelineConfig (augment=...).

The data sets (``spikejax.data.registry``; one table for image and event sets)::

  spikejax.data.get_spec(name) -> DatasetSpec   # unknown name: ValueError listing the known ones
  spikejax.data.list_datasets(kind=None), spikejax.data.DATASETS (name -> spec, read-only)
  spikejax.data.register(DatasetSpec(name=..., kind='image' | 'event', num_classes=...,
                                     input_shape=(S, S, C), builder=..., mean=..., std=...,
                                     augment=AugmentConfig(...), ...))
  spec.num_classes, spec.input_shape   # (H, W, C) of one image / one event frame
  spec.example_shape(image_size, channels, time_steps)   # what get_dataset yields per example

A builder is ``builder(spec, split, *, data_dir, download) -> source`` (``spikejax.data.sources``:
``TfdsBuilder`` for tfds sets, ``ArraySource(images, labels)`` / ``RecordSource(records)`` for
data in memory). Registering a spec is all a new data set needs.

  spikejax.data.prepare_fashion_mnist(data_dir=None, *, source_dir=None,
                                      file_format='array_record', verify=True) -> str
      # builds tfds' own fashion_mnist 3.0.1 from Debian's local files
      # (`apt-get install -y dataset-fashion-mnist`), no network; needs tensorflow(-cpu).

  spikejax.data.load_split_arrays(name, split, data_dir=None, *, download=True, start=0, end=None)
      -> (uint8 images [N, H, W, C], int32 labels [N])   # small datasets, cached in memory

Modules, imports running one way (no circles, counting imports inside functions): leaves
``transforms``, ``events``, ``emulate``, ``fashion_mnist``; ``augment`` and ``sources`` (tfds /
in-memory access) on ``transforms``; the tfds builders ``event_datasets`` and ``dvs_datasets``
on those; ``registry`` (the table; imports the builders only inside the built-in entries'
functions); ``batching`` (sharding, order, prefetch); the pipelines ``images`` and
``event_pipeline`` on ``registry``/``batching``/``augment``; ``pipeline`` (``get_dataset``) on
both pipelines; this package on all.

Every process reads only its own contiguous shard ``[p*n//P, (p+1)*n//P)`` of the split (the
``tfds.split_for_jax_process`` scheme); training epochs have ``(n // P) // (B // P)`` steps on
every process, eval passes ``ceil(ceil(n / P) / (B // P))``.

Augmentations (``spikejax.data.augment``, pure numpy/PIL functions of a ``np.random.Generator``):
``random_crop_with_padding``, ``random_flip``, ``random_resized_crop``, ``rand_augment``
(timm ``rand-m9-mstd0.5-inc1``), ``random_erasing`` (timm, 'pixel'), ``mixup_cutmix`` (timm
batch mode), ``smooth_labels``. Deterministic transforms: ``spikejax.data.transforms``.

Reading uses tfds' random-access ``data_source`` (array_record) and needs no TensorFlow;
building Fashion-MNIST does. Normalization constants: ``transforms.IMAGENET_MEAN/STD``,
``transforms.CIFAR10_MEAN/STD``, ``fashion_mnist.MEAN/STD`` (0.2860406, 0.3530242; computed on
the 60000 training images).
"""

from spikejax.data import augment, sources, transforms
from spikejax.data.augment import AugmentConfig
from spikejax.data.batching import Dataset
from spikejax.data.det_augment import DetPipelineConfig
from spikejax.data.det_pipeline import DetectionDataset
from spikejax.data.errors import DataError, MissingDataError
from spikejax.data.event_pipeline import EventDataset, FrameConfig, model_input
from spikejax.data.fashion_mnist import prepare_fashion_mnist
from spikejax.data.images import ImageDataset, load_split_arrays
from spikejax.data.pipeline import get_dataset
from spikejax.data.registry import (DATASETS, EVENT_SPECS, SPECS, DatasetSpec, get_spec,
                                    list_datasets, register, unregister)

__all__ = [
    "AugmentConfig",
    "DATASETS",
    "Dataset",
    "DatasetSpec",
    "DetPipelineConfig",
    "DetectionDataset",
    "EVENT_SPECS",
    "EventDataset",
    "FrameConfig",
    "ImageDataset",
    "SPECS",
    "augment",
    "get_dataset",
    "get_spec",
    "list_datasets",
    "load_split_arrays",
    "model_input",
    "prepare_fashion_mnist",
    "DataError",
    "MissingDataError",
    "register",
    "sources",
    "transforms",
    "unregister",
]
