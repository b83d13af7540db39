"""The input pipeline: a data set config in, numpy batches out.

Public entry points::

    info = get_dataset_info(config)               # name, classes, split sizes
    train = train_iterator(config, batch_size=64, image_size=224,
                           mean=spec.mean, std=spec.std, seed=0)
    batch = next(train)      # {'image': f32[64, 224, 224, 3], 'label': i32[64]}
    for batch in eval_iterator(config, "test", batch_size=64, image_size=224,
                               mean=spec.mean, std=spec.std):
      ...                    # + 'mask': f32[64], 0 for padding

``config`` is an ``ml_collections.ConfigDict`` (``default_config()`` has every
field; missing fields take these defaults):

  name: which data set.
    * a MedMNIST v2 2D name, e.g. ``"pneumoniamnist"``, ``"retinamnist"``,
      ``"chestmnist"`` (multi-label) — see ``medmnist.DATASETS``. Built with
      the ``medmnist.MedMNIST`` TFDS builder from the official npz.
    * ``"tfds:<name>"``, any image-classification data set of the TFDS
      catalog (``tfds:malaria``, ``tfds:colorectal_histology``,
      ``tfds:patch_camelyon``): its Image and ClassLabel features are used.
      Splits ``train``/``validation``/``test`` when present; missing ones are
      carved from ``train`` deterministically (TFDS stores examples shuffled,
      so the slices are random but fixed, not stratified): no val and no
      test → ``train[:80%]`` / ``train[80%:90%]`` / ``train[90%:]``; only
      one of them missing → it is ``train[:10%]`` and train is
      ``train[10%:]``.
    * ``"folder:/path/to/root"``, your own image files, see ``image_folder``.
  data_dir: optional. MedMNIST: directory searched first for
    ``<name>.npz`` (then ``$JAXBN_DATA_DIR``, then the shipped asset, then a
    download). ``tfds:``: the TFDS data_dir (default: TFDS's own,
    ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``). Unused for folders.
  cache_dir: optional TFDS data_dir for the prepared MedMNIST data (default
    ``$JAXBN_CACHE_DIR/tensorflow_datasets`` or
    ``~/.cache/jaxbn/tensorflow_datasets``).
  download: bool, default True. May MedMNIST/TFDS data be downloaded
    (``$JAXBN_OFFLINE=1`` forbids it too).
  augment: bool, default True. Train-time augmentation: a random resized
    crop (area 80–100 % of the image, aspect ratio 3/4–4/3, sampled on the
    source image and resized to ``image_size``) and a random horizontal flip.
    Both are label-preserving for chest X-rays, fundus, dermatoscopy, blood
    cells and histology; the flip is off by default for OrganA/C/S-MNIST,
    whose classes include left/right organs.
  hflip: optional bool overriding that per-data-set flip default (flips
    only happen with ``augment``).
  shuffle_buffer: int, default 10_000. Unused by training since the global
    index order below (each epoch is a full permutation); kept so that old
    commands still parse.
  cache: optional bool. How the training split is held in memory for random
    access: decoded (uint8 before resize/augmentation, 28-px for MedMNIST:
    3.7 MB for PneumoniaMNIST) or, with ``False``, as the stored encoded
    (PNG/JPEG) bytes decoded per example. None (default): decoded when the
    images have a fixed shape and fit in 1 GiB (every MedMNIST set,
    ``tfds:colorectal_histology``), else encoded. Folders are read from their
    files by index.
  folds: int, default 0. Cross-validation: with ``folds=K`` (K >= 2) the
    train and val splits are pooled and dealt into K folds stratified by
    class (``assign_folds``, fixed by the labels alone, not by the run's
    seed); fold ``fold`` is the val split and the other K-1 the train split.
    The test split is untouched. Choosing a recipe on the K folds' mean
    validation AUC uses every labelled example for validation once, instead
    of one small val split (RetinaMNIST's has 120 images). Works for every
    source: MedMNIST, ``tfds:`` and folders.
  fold: int, default 0. With ``folds``: which fold (0 .. folds-1) is val.

Per example: decode → gray→RGB (tile) → resize to ``image_size`` (``resize``, bilinear by
default; antialiased when shrinking; aspect ratio not kept) → [augment] → scale to
[0, 1] → normalise with the checkpoint's ``mean``/``std`` (on [0, 1]
pixels) → batch → prefetch. Crop and flip are drawn on the source image, and
the per-channel affine scaling/normalisation, which commutes exactly with each
of these resizings (linear, weights summing to 1), is applied before the resize
when the source is the smaller image (MedMNIST's 28 px): same output, a
fraction of the work.

Training order (one global order for any number of hosts): global batch
``k`` of a run with global batch size ``G`` holds the examples at positions
``p = k*G .. k*G + G - 1`` of an endless stream; position ``p`` is example
``index_shuffle(p mod N, seed=[seed, p div N])`` of the ``N`` training examples,
i.e. a fresh seeded permutation every epoch (``tf.random.experimental.
index_shuffle``, a stateless bijection: nothing is materialised). Its
augmentation draws from ``fold_in(seed, p)``. So batch ``k`` depends only on
(seed, k): process ``i`` of ``n`` reads rows ``i*G/n .. (i+1)*G/n - 1`` of it
(``batch_size`` is the per-process ``G/n``), which is the row block
``jax.make_array_from_process_local_data`` gives that process's devices, so a
2-process run trains on the same global batches as a 1-process run; and
``start_step=k`` starts at batch ``k`` without reading batches ``0..k-1``.

Evaluation likewise: global eval batch ``k`` holds examples ``k*G ..
k*G + G - 1`` of the split in stored order (the last one padded, 'mask' 0),
process ``i`` yields its rows of it, and the trainer gathers the predictions
of all processes: those of a one-process run, in the same order.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import os
import sys
from typing import Callable, Iterator, Sequence

import ml_collections
import numpy as np

from jaxbn.tf_setup import hide_gpus_from_tf, import_tensorflow

tf = import_tensorflow()  # before TFDS and the data modules import it, without its start-up lines
import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

from jaxbn.data import fields  # pylint: disable=g-import-not-at-top
from jaxbn.data import augment as augment_lib  # pylint: disable=g-import-not-at-top
from jaxbn.data import image_folder  # pylint: disable=g-import-not-at-top
from jaxbn.data import medmnist  # pylint: disable=g-import-not-at-top

SPLITS = ("train", "val", "test")
TFDS_PREFIX = "tfds:"
FOLDER_PREFIX = "folder:"
RRC_SCALE = (0.8, 1.0)
RRC_RATIO = (3 / 4, 4 / 3)
CACHE_AUTO_MAX_BYTES = 1 << 30  # Per process, for ``cache=None``.

_SPLIT_ALIASES = {"validation": "val", "valid": "val"}


default_config = fields.default_config
_get = fields.get


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model and a trainer need to know about a data set."""

  name: str
  num_classes: int  # classes, or labels for multi-label data sets
  multi_label: bool
  class_names: tuple[str, ...]
  num_examples: dict[str, int]  # 'train', 'val', 'test' -> size (all processes)


@dataclasses.dataclass(frozen=True)
class _Source:
  """A data set reduced to what the pipeline needs.

  ``read(split)`` gives the whole split in stored order as {'image': uint8
  [h, w, c], 'label': int or 0/1 vector} (evaluation); ``table(split,
  decoded)`` the whole split for random access (:class:`_Table`, training).
  ``image_bytes`` is the decoded size of one image when all have the same
  static shape, else None (decides ``cache=None``).
  """

  info: DatasetInfo
  hflip_ok: bool
  read: Callable[[str], tf.data.Dataset]
  table: Callable[[str, bool], "_Table"]
  image_bytes: int | None = None


@dataclasses.dataclass(frozen=True)
class _Table:
  """A split held in memory for random access by example index.

  ``columns`` are tensors with a leading axis of ``size`` (images decoded, or
  encoded bytes / file paths); ``decode`` turns one gathered row into
  {'image': uint8 [h, w, c], 'label'}.
  """

  size: int
  columns: dict[str, tf.Tensor]
  decode: Callable[[dict[str, tf.Tensor]], dict[str, tf.Tensor]]

  def example(self, index: tf.Tensor) -> dict[str, tf.Tensor]:
    return self.decode({k: tf.gather(v, index) for k, v in self.columns.items()})

  def rows(self, indices: np.ndarray) -> "_Table":
    """The table of the rows ``indices`` (in that order)."""
    indices = tf.constant(np.asarray(indices, np.int64))
    return _Table(int(indices.shape[0]),
                  {k: tf.gather(v, indices) for k, v in self.columns.items()}, self.decode)

  def dataset(self) -> tf.data.Dataset:
    """Every row in order, decoded."""
    return tf.data.Dataset.range(self.size).map(self.example,
                                                num_parallel_calls=tf.data.AUTOTUNE)


def _concat(a: _Table, b: _Table) -> _Table:
  """``a``'s rows, then ``b``'s (two splits of one source: same columns and decoding)."""
  return _Table(a.size + b.size, {k: tf.concat([a.columns[k], b.columns[k]], 0)
                                  for k in a.columns}, a.decode)


# ------------------------------------------------------------------ sources --


def _check_info(info: DatasetInfo) -> DatasetInfo:
  """Build-time sanity checks shared by all sources."""
  if info.num_classes < 2 and not info.multi_label:
    raise ValueError(f"{info.name}: {info.num_classes} class(es); need at least 2.")
  for split in SPLITS:
    if info.num_examples.get(split, 0) <= 0:
      raise ValueError(f"Empty split {split!r} in data set {info.name}.")
  return info


def _tfds_reader(builder: tfds.core.DatasetBuilder, splits: dict[str, str],
                 image_key: str = "image", label_key: str = "label"):
  """``read`` and ``table`` functions for a prepared TFDS builder."""

  def read(split):
    ds = builder.as_dataset(split=splits[split], shuffle_files=False)
    return ds.map(lambda x: {"image": x[image_key], "label": x[label_key]},
                  num_parallel_calls=tf.data.AUTOTUNE)

  image_feature = builder.info.features[image_key]

  @functools.lru_cache(maxsize=4)
  def table(split, decoded):
    # The whole split in stored order (MedMNIST: npz order), read once per process.
    decoders = None if decoded else {image_key: tfds.decode.SkipDecoding()}
    ds = builder.as_dataset(split=splits[split], shuffle_files=False, decoders=decoders)
    images, labels = [], []
    for x in tfds.as_numpy(ds):
      images.append(x[image_key])
      labels.append(x[label_key])
    columns = {"image": tf.constant(np.stack(images) if decoded else np.asarray(images, object),
                                    tf.uint8 if decoded else tf.string),
               "label": tf.constant(np.stack(labels))}
    if decoded:
      return _Table(len(labels), columns, lambda x: x)
    return _Table(len(labels), columns, lambda x: {
        "image": image_feature.decode_example(x["image"]), "label": x["label"]})

  return read, table


def _medmnist_source(name: str, data_dir: str | None, cache_dir: str | None,
                     download: bool) -> _Source:
  builder = medmnist.get_builder(name, npz_dir=data_dir, cache_dir=cache_dir,
                                 download=download)
  table = builder.medmnist_info
  info = DatasetInfo(
      name=name, num_classes=table.num_classes, multi_label=table.multi_label,
      class_names=table.label_names,
      num_examples={s: builder.info.splits[s].num_examples for s in SPLITS})
  read, rows = _tfds_reader(builder, {s: s for s in SPLITS})
  return _Source(_check_info(info), table.hflip_ok, read, rows,
                 _static_image_bytes(builder.info.features["image"]))


def tfds_splits(available: Sequence[str]) -> dict[str, str]:
  """Maps train/val/test to TFDS split strings, carving missing ones."""
  if "train" not in available:
    raise ValueError(f"No 'train' split (has: {', '.join(available)}).")
  val = next((s for s in ("validation", "val", "valid") if s in available), None)
  test = "test" if "test" in available else None
  if val and test:
    return {"train": "train", "val": val, "test": test}
  if test:
    return {"train": "train[10%:]", "val": "train[:10%]", "test": test}
  if val:
    return {"train": "train[10%:]", "val": val, "test": "train[:10%]"}
  return {"train": "train[:80%]", "val": "train[80%:90%]", "test": "train[90%:]"}


def _image_label_keys(info: tfds.core.DatasetInfo, name: str
                      ) -> tuple[str, str]:
  """The (image, label) feature keys of a TFDS classification data set.

  The supervised keys when they are an Image and a ClassLabel; else the only
  Image and the only ClassLabel feature (or those named image / label).
  """
  features = info.features
  images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
  labels = [k for k, f in features.items()
            if isinstance(f, tfds.features.ClassLabel)]
  keys = info.supervised_keys
  if (isinstance(keys, tuple) and len(keys) == 2
      and keys[0] in images and keys[1] in labels):
    return keys
  if len(images) != 1 or len(labels) != 1:
    pick = lambda keys, k: [k] if k in keys else keys
    images, labels = pick(images, "image"), pick(labels, "label")
  if len(images) != 1 or len(labels) != 1:
    raise ValueError(
        f"TFDS data set {name!r} is not single-label image classification: "
        f"need one Image and one ClassLabel feature, found Image {images} and "
        f"ClassLabel {labels}.")
  return images[0], labels[0]


def _static_image_bytes(feature: tfds.features.Image) -> int | None:
  """uint8 bytes of one decoded image if its shape is static, else None."""
  shape = feature.shape
  return None if None in shape else math.prod(shape)


def _ensure_importlib_resources() -> None:
  """Lets tensorflow-datasets 4.9 prepare data without the backport.

  TFDS imports ``importlib_resources`` while preparing a data set but only
  requires it on Python < 3.9; from 3.9 the standard library module has the
  same API, so alias it when the backport is missing.
  """
  try:
    importlib.import_module("importlib_resources")
  except ImportError:
    importlib.import_module("importlib.resources.abc")
    sys.modules["importlib_resources"] = sys.modules["importlib.resources"]


def _catalog_source(name: str, data_dir: str | None, download: bool) -> _Source:
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(_unknown_name_message(TFDS_PREFIX + name)) from e
  image_key, label_key = _image_label_keys(builder.info, name)
  if not builder.data_path.exists():
    if not download or medmnist.offline():
      why = f"${medmnist.OFFLINE_ENV} is set" if download else "download=False"
      raise FileNotFoundError(
          f"TFDS data set {name!r} is not prepared in {builder.data_dir_root} "
          f"and {why}; prepare it there or set config.data_dir.")
    _ensure_importlib_resources()
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
      detail = (str(e).strip().splitlines() or [""])[0][:200]
      raise RuntimeError(
          f"Could not download/prepare TFDS data set {name!r} into "
          f"{builder.data_dir_root} ({type(e).__name__}: {detail}); prepare it "
          f"where there is network access and point config.data_dir at it."
      ) from e
  splits = tfds_splits(list(builder.info.splits))
  label = builder.info.features[label_key]
  info = DatasetInfo(
      name=TFDS_PREFIX + name, num_classes=label.num_classes, multi_label=False,
      class_names=tuple(label.names),
      num_examples={s: builder.info.splits[splits[s]].num_examples
                    for s in SPLITS})
  read, rows = _tfds_reader(builder, splits, image_key, label_key)
  return _Source(_check_info(info), True, read, rows,
                 _static_image_bytes(builder.info.features[image_key]))


def _folder_source(root: str) -> _Source:
  folder = image_folder.scan(root)
  info = DatasetInfo(
      name=FOLDER_PREFIX + folder.root, num_classes=folder.num_classes,
      multi_label=False, class_names=folder.class_names,
      num_examples=folder.num_examples)

  def read(split):
    return image_folder.as_dataset(folder, split)

  def table(split, decoded):
    del decoded  # files are decoded per example
    files, labels = folder.files[split], folder.labels[split]
    return _Table(len(files), {
        "image": tf.constant(files, tf.string, shape=[len(files)]),
        "label": tf.constant(labels, tf.int32, shape=[len(files)]),
    }, lambda x: {"image": image_folder.decode(x["image"]), "label": x["label"]})

  return _Source(_check_info(info), True, read, table)


# ---------------------------------------------------------- cross-validation --


def assign_folds(labels: np.ndarray, folds: int, seed: int = 0) -> np.ndarray:
  """Fold (0 .. folds-1) of every example, stratified by class.

  Single-label (``labels`` int [N]): each class's examples, in a seeded random
  order, are dealt to the folds in turn, continuing where the previous class
  stopped, so every fold has each class within one example of ``1/folds`` of
  it and the fold sizes differ by at most one. Multi-label ([N, L]) data are
  dealt in one seeded random order (not stratified). Deterministic in
  (labels, folds, seed).
  """
  labels = np.asarray(labels)
  if folds < 2 or folds > len(labels):
    raise ValueError(f"Cannot split {len(labels)} examples into {folds} folds: need "
                     f"2 <= data.folds <= {len(labels)}.")
  rng = np.random.default_rng(seed)
  if labels.ndim == 1:
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == c))
                            for c in np.unique(labels)])
  else:
    order = rng.permutation(len(labels))
  fold_of = np.empty(len(labels), np.int64)
  fold_of[order] = np.arange(len(labels)) % folds
  return fold_of


def _folded_source(source: _Source, folds: int, fold: int) -> _Source:
  """``source`` with train+val pooled and split ``folds`` ways; fold ``fold`` is val.

  The test split is untouched. Both new splits keep the pooled (train, then
  val) stored order. Fold membership depends only on the labels and
  ``folds`` (:func:`assign_folds` with seed 0), not on the run's seed, so the
  runs of one cross-validation share their folds.
  """
  if not 0 <= fold < folds:
    raise ValueError(f"data.fold={fold} is not a fold of data.folds={folds}: use 0 .. {folds - 1}.")

  @functools.lru_cache(maxsize=2)
  def pooled(decoded):
    return _concat(source.table("train", decoded), source.table("val", decoded))

  fold_of = assign_folds(pooled(False).columns["label"].numpy(), folds)
  indices = {"train": np.flatnonzero(fold_of != fold), "val": np.flatnonzero(fold_of == fold)}

  @functools.lru_cache(maxsize=4)
  def table(split, decoded):
    return source.table(split, decoded) if split == "test" else pooled(decoded).rows(indices[split])

  def read(split):
    return source.read(split) if split == "test" else table(split, False).dataset()

  info = dataclasses.replace(source.info, num_examples={
      **source.info.num_examples, **{s: len(i) for s, i in indices.items()}})
  return _Source(_check_info(info), source.hflip_ok, read, table, source.image_bytes)


def _unknown_name_message(name: str) -> str:
  return (
      f"Unknown data set {name!r}; use a MedMNIST name "
      f"({', '.join(medmnist.DATASETS)}), 'tfds:<name>' for a TFDS catalog "
      f"image-classification data set (e.g. 'tfds:malaria', "
      f"'tfds:colorectal_histology', 'tfds:patch_camelyon'), or "
      f"'folder:/path/to/root' for your own images.")


@functools.lru_cache(maxsize=16)
def _load_source(name: str, data_dir: str | None, cache_dir: str | None,
                 download: bool, env: tuple[str | None, ...], folds: int = 0,
                 fold: int = 0) -> _Source:
  if folds:
    return _folded_source(_load_source(name, data_dir, cache_dir, download, env), folds, fold)
  del env  # Part of the cache key only: search paths depend on it.
  if name.startswith(TFDS_PREFIX):
    return _catalog_source(name[len(TFDS_PREFIX):], data_dir, download)
  if name.startswith(FOLDER_PREFIX):
    return _folder_source(name[len(FOLDER_PREFIX):])
  if name in medmnist.DATASETS:
    return _medmnist_source(name, data_dir, cache_dir, download)
  raise ValueError(_unknown_name_message(name))


def _source(config: ml_collections.ConfigDict) -> _Source:
  """The (memoised per process) source that ``config`` names."""
  hide_gpus_from_tf()  # before TF builds any op: keep it off the accelerators JAX uses
  env = tuple(os.environ.get(k) for k in (
      medmnist.DATA_DIR_ENV, medmnist.CACHE_DIR_ENV, medmnist.OFFLINE_ENV,
      "TFDS_DATA_DIR"))
  return _load_source(_get(config, "name"), _get(config, "data_dir"),
                      _get(config, "cache_dir"), bool(_get(config, "download")),
                      env, int(_get(config, "folds")), int(_get(config, "fold")))


def get_dataset_info(config: ml_collections.ConfigDict) -> DatasetInfo:
  """Builds (first call: prepares and checks) the data set; returns its info."""
  return _source(config).info


# ---------------------------------------------------------------- transforms --


def _normalizer(mean, std) -> tuple[tf.Tensor, tf.Tensor]:
  """(scale, offset) with ``pixel * scale + offset == (pixel/255 - mean)/std``."""
  mean = np.broadcast_to(np.asarray(mean, np.float32).reshape(-1), (3,))
  std = np.broadcast_to(np.asarray(std, np.float32).reshape(-1), (3,))
  if np.any(std <= 0):
    raise ValueError(f"std must be positive, got {std.tolist()}.")
  scale = 1.0 / (255.0 * std)
  return tf.constant(scale), tf.constant(-mean / std)


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
  """Gray → 3 equal channels; RGBA → RGB."""
  channels = image.shape[-1]
  if channels == 1:
    return tf.tile(image, [1, 1, 3])
  if channels == 3:
    return image
  if channels == 4:
    return image[..., :3]
  image = tf.cond(tf.equal(tf.shape(image)[-1], 1),
                  lambda: tf.tile(image, [1, 1, 3]), lambda: image[..., :3])
  image.set_shape([None, None, 3])
  return image


def _resize(image: tf.Tensor, size: int, antialias: bool, method: str) -> tf.Tensor:
  """Resize to size×size (``method``: one of ``fields.RESIZE_METHODS``; antialias matters
  only when shrinking)."""
  image = tf.image.resize(image, (size, size), method=method, antialias=antialias)
  image.set_shape([size, size, image.shape[-1]])
  return image


def _random_crop(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """Inception-style crop: area RRC_SCALE, aspect ratio RRC_RATIO."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image),
      bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
      seed=seed,
      min_object_covered=0.0,
      aspect_ratio_range=RRC_RATIO,
      area_range=RRC_SCALE,
      max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  return tf.slice(image, begin, size)


def preprocess(example: dict[str, tf.Tensor], *, image_size: int,
               scale: tf.Tensor, offset: tf.Tensor, multi_label: bool,
               augment: bool = False, hflip: bool = False,
               seed: tf.Tensor | None = None, resize: str = "bilinear") -> dict[str, tf.Tensor]:
  """One source example → {'image': f32 [S, S, 3] normalised, 'label'}.

  Crop and flip act on the source image (a flip commutes exactly with the
  symmetric bilinear resize). The affine pixel normalisation is applied to
  the smaller of source and output: for 28 → 224 px, normalising the 28-px
  image first makes a batch 4-7× faster on 2 CPU cores than normalising the
  224-px one.

  Args:
    example: {'image': uint8 [h, w, c], 'label': int or 0/1 vector}.
    image_size: output side S.
    scale, offset: from ``_normalizer``; per channel.
    multi_label: labels are 0/1 vectors (→ float32) rather than ints (→ int32).
    augment: random resized crop (needs ``seed``).
    hflip: random horizontal flip (needs ``seed``).
    seed: int [2] stateless seed for this example.
    resize: the resize method (``fields.RESIZE_METHODS``; the data config's ``resize``).
  """
  image = example["image"]
  height, width = image.shape[0], image.shape[1]
  small = height is not None and width is not None and max(height, width) <= image_size
  if augment or hflip:
    crop_seed, flip_seed = tf.unstack(
        tf.random.experimental.stateless_split(seed, 2))
  if augment:
    image = _random_crop(image, crop_seed)
  if hflip:
    image = tf.image.stateless_random_flip_left_right(image, flip_seed)
  image = tf.cast(_to_rgb(image), tf.float32)
  if small:
    image = _resize(image * scale + offset, image_size, antialias=False, method=resize)
  else:
    image = _resize(image, image_size, antialias=True, method=resize) * scale + offset
  label = tf.cast(example["label"], tf.float32 if multi_label else tf.int32)
  return {"image": image, "label": label}


def _options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True  # Parallel maps keep the order: reproducible.
  # Parallelism comes from num_parallel_calls, one element per thread.
  options.threading.max_intra_op_parallelism = 1
  return options


def _should_cache(cache: bool | None, source: _Source, num_examples: int) -> bool:
  """``cache`` if set; None: cache what surely fits in CACHE_AUTO_MAX_BYTES."""
  if cache is not None:
    return bool(cache)
  return (source.image_bytes is not None
          and source.image_bytes * num_examples <= CACHE_AUTO_MAX_BYTES)


# ----------------------------------------------------------------- iterators --


def _check_process(process_index: int, process_count: int) -> None:
  if not 0 <= process_index < process_count:
    raise ValueError(f"Need 0 <= process_index < process_count, got "
                     f"{process_index} and {process_count}.")


def global_positions(step: tf.Tensor, *, global_batch: int, process_index: int,
                     process_count: int) -> tf.Tensor:
  """Stream positions of this process's rows of global batch ``step`` (int64 [G/n])."""
  per_process = global_batch // process_count
  first = step * global_batch + process_index * per_process
  return first + tf.range(per_process, dtype=tf.int64)


def example_index(position: tf.Tensor, num_examples: int, seed: int) -> tf.Tensor:
  """Example at (scalar) stream ``position``: a seeded permutation of the split per epoch."""
  position = tf.cast(position, tf.int64)
  epoch, offset = position // num_examples, position % num_examples
  return tf.random.experimental.index_shuffle(
      offset, tf.stack([tf.constant(seed, tf.int64), epoch]),
      tf.constant(num_examples - 1, tf.int64))


def _train_table(config: ml_collections.ConfigDict, source: _Source) -> _Table:
  """The training split as :func:`train_iterator` reads it (decoded when cached)."""
  return source.table("train", _should_cache(_get(config, "cache"), source,
                                             source.info.num_examples["train"]))


def train_labels(config: ml_collections.ConfigDict) -> np.ndarray:
  """The training split's labels in stored order: int [N], or 0/1 [N, L] if multi-label."""
  return _train_table(config, _source(config)).columns["label"].numpy()


def train_iterator(config: ml_collections.ConfigDict, *, batch_size: int,
                   image_size: int, mean, std, seed: int,
                   process_index: int = 0, process_count: int = 1,
                   start_step: int = 0, with_index: bool = False
                   ) -> Iterator[dict[str, np.ndarray]]:
  """Infinite, shuffled, augmented training batches for this process.

  Global batch ``k`` (``batch_size * process_count`` examples) depends only on
  ``seed`` and ``k`` (module docstring); this process gets its
  ``batch_size`` rows of it, from batch ``start_step`` on, so a resumed run
  reads batch ``k`` directly. Every epoch is a new permutation; batches run
  across epoch boundaries and none is partial.

  Yields:
    {'image': float32 [B, S, S, 3], 'label': int32 [B] (float32 [B, L] for
    multi-label)}, ``B = batch_size`` (per process), ``S = image_size``;
    with ``with_index`` also 'index': int64 [B], the examples' indices in the
    split.
  """
  _check_process(process_index, process_count)
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}.")
  source = _source(config)
  scale, offset = _normalizer(mean, std)
  augment = bool(_get(config, "augment"))
  hflip = _get(config, "hflip")
  hflip = augment and (source.hflip_ok if hflip is None else bool(hflip))
  table = _train_table(config, source)
  aug_seed = tf.constant([seed, 0], tf.int64)
  global_batch = batch_size * process_count

  extra_aug = augment_lib.settings(config)
  intensity = augment_lib.intensity_settings(config)
  resize = _get(config, "resize")

  def process(position):
    index = example_index(position, table.size, seed)
    example = table.example(index)
    example_seed = tf.random.experimental.stateless_fold_in(aug_seed, position)
    out = preprocess(example, image_size=image_size, scale=scale,
                     offset=offset, multi_label=source.info.multi_label,
                     augment=augment, hflip=hflip, seed=example_seed, resize=resize)
    if augment_lib.is_active(**extra_aug):  # rotations, shifts, vflip
      out["image"] = augment_lib.random_affine(
          out["image"], tf.random.experimental.stateless_fold_in(example_seed, 1), **extra_aug)
    if any(intensity.values()):  # brightness, contrast
      out["image"] = augment_lib.random_intensity(
          out["image"], tf.random.experimental.stateless_fold_in(example_seed, 2),
          scale=scale, offset=offset, **intensity)
    if with_index:
      out["index"] = index
    return out

  ds = tf.data.Dataset.range(start_step, np.iinfo(np.int64).max)
  ds = ds.map(lambda k: global_positions(k, global_batch=global_batch,
                                         process_index=process_index,
                                         process_count=process_count)).unbatch()
  ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE)
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
  return iter(tfds.as_numpy(ds))


def num_eval_batches(num_examples: Sequence[int], batch_size: int) -> int:
  """Batches every process runs: enough for the largest shard."""
  return max(1, math.ceil(max(num_examples) / batch_size))


def eval_iterator(config: ml_collections.ConfigDict, split: str, *,
                  batch_size: int, image_size: int, mean, std,
                  process_index: int = 0, process_count: int = 1
                  ) -> Iterator[dict[str, np.ndarray]]:
  """One deterministic pass over this process's part of ``split``.

  Global batch ``k`` (``batch_size * process_count`` examples) holds examples
  ``k*G .. k*G + G - 1`` of the split in stored order, the last one padded
  with zero images whose 'mask' is 0; this process yields its ``batch_size``
  rows of each. So every process runs the same number of batches, and the
  gathered predictions are those of a one-process run, in the same order.

  Yields:
    {'image': float32 [B, S, S, 3], 'label': int32 [B] (float32 [B, L]),
    'mask': float32 [B] (1 for real examples, 0 for padding)}.
  """
  split = _SPLIT_ALIASES.get(split, split)
  if split not in SPLITS:
    raise ValueError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
  _check_process(process_index, process_count)
  source = _source(config)
  num_examples = source.info.num_examples[split]
  scale, offset = _normalizer(mean, std)
  resize = _get(config, "resize")

  def process(example):
    out = preprocess(example, image_size=image_size, scale=scale,
                     offset=offset, multi_label=source.info.multi_label, resize=resize)
    out["mask"] = tf.constant(1.0)
    return out

  def mine(position, example):  # this process's rows of each global batch
    del example
    return tf.equal((position // batch_size) % process_count, process_index)

  def process_at(position, example):
    del position
    return process(example)

  ds = source.read(split).enumerate().filter(mine)
  ds = ds.map(process_at, num_parallel_calls=tf.data.AUTOTUNE)
  positions = np.arange(num_examples)
  real = int(np.sum((positions // batch_size) % process_count == process_index))
  num_batches = max(1, math.ceil(num_examples / (batch_size * process_count)))
  padding = {k: tf.zeros(s.shape, s.dtype) for k, s in ds.element_spec.items()}
  ds = ds.concatenate(tf.data.Dataset.from_tensors(padding).repeat(
      num_batches * batch_size - real))
  ds = ds.batch(batch_size, drop_remainder=True)
  ds = ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
  return iter(tfds.as_numpy(ds))
