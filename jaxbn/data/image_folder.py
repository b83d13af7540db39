"""Image classification data sets from a user's own folder of image files.

Two layouts are understood (class names = sub-folder names, sorted)::

    root/train/<class>/*.png        root/<class>/*.png
    root/val/<class>/*.png          (one folder per class; val and test are
    root/test/<class>/*.png          carved out of it, see below)

In the split layout ``val/`` (or ``validation/``) and ``test/`` are optional;
a missing one is carved out of ``train/`` like in the single layout. Carving
is stratified and deterministic: within each class the sorted file list is
permuted with a fixed seed and the first ``round(val_fraction * n)`` files go
to val, the next ``round(test_fraction * n)`` to test (defaults 10 % / 10 %).

Files with the extensions in ``IMAGE_EXTENSIONS`` (any case) are images; other
files and hidden entries are ignored. ``scan`` decodes every image once with
PIL so that a corrupt file is reported by name when the data set is built,
not as a TensorFlow error in the middle of training. Errors are one-line
``ValueError``/``FileNotFoundError``s: fewer than two class folders, an empty
class folder or split, a class in val/test that train lacks, corrupt files.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os

import numpy as np
from PIL import Image
import tensorflow as tf

# Formats that both PIL (validation) and tf.io.decode_image (reading) decode.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
SPLITS = ("train", "val", "test")
_SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}
_LAYOUT_HINT = ("expected root/<class>/<image> or root/{train,val,test}/<class>/"
                "<image> with at least 2 class folders")


@dataclasses.dataclass(frozen=True)
class ImageFolder:
  """File lists and integer labels of a scanned folder, per split."""

  root: str
  class_names: tuple[str, ...]
  files: dict[str, tuple[str, ...]]  # split -> file paths
  labels: dict[str, np.ndarray]  # split -> int32 class indices

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def num_examples(self) -> dict[str, int]:
    return {split: len(self.files[split]) for split in SPLITS}


def _is_image(name: str) -> bool:
  return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _subdirs(path: str) -> list[str]:
  return sorted(e.name for e in os.scandir(path)
                if e.is_dir() and not e.name.startswith("."))


def _list_classes(directory: str) -> dict[str, list[str]]:
  """class name -> sorted image paths, for one ``<dir>/<class>/*`` folder."""
  classes = _subdirs(directory)
  if len(classes) < 2:
    found = f" ({', '.join(classes)})" if classes else ""
    raise ValueError(
        f"Found {len(classes)} class folder(s){found} in {directory}; "
        f"{_LAYOUT_HINT}.")
  files = {}
  for name in classes:
    class_dir = os.path.join(directory, name)
    images = sorted(f for f in os.listdir(class_dir)
                    if _is_image(f) and os.path.isfile(os.path.join(class_dir, f)))
    if not images:
      raise ValueError(
          f"Empty class folder {class_dir}: no image files "
          f"({', '.join(IMAGE_EXTENSIONS)}).")
    files[name] = [os.path.join(class_dir, f) for f in images]
  return files


def _carve(files: list[str], fractions: list[float], seed: int
           ) -> list[list[str]]:
  """Deterministically splits one class's files into len(fractions)+1 parts."""
  order = np.random.default_rng(seed).permutation(len(files))
  shuffled = [files[i] for i in order]
  parts, start = [], 0
  for fraction in fractions:
    count = int(round(fraction * len(files)))
    parts.append(sorted(shuffled[start:start + count]))
    start += count
  return [sorted(shuffled[start:])] + parts


def _find_split_dirs(root: str) -> dict[str, str]:
  found = {}
  for split, names in _SPLIT_DIRS.items():
    for name in names:
      if os.path.isdir(os.path.join(root, name)):
        found[split] = os.path.join(root, name)
        break
  return found


def _corrupt_reason(path: str) -> str | None:
  """None if PIL fully decodes ``path``, else why not."""
  try:
    with Image.open(path) as image:
      image.load()
    return None
  except Exception as e:  # pylint: disable=broad-except
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def validate_images(paths: list[str], max_workers: int = 8) -> None:
  """Decodes every image; one ValueError naming the corrupt files."""
  with concurrent.futures.ThreadPoolExecutor(max_workers) as pool:
    reasons = list(pool.map(_corrupt_reason, paths))
  bad = [(p, r) for p, r in zip(paths, reasons) if r is not None]
  if bad:
    shown = "; ".join(f"{p} ({r})" for p, r in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise ValueError(
        f"{len(bad)} unreadable/corrupt image file(s): {shown}{more}; "
        f"fix or remove them.")


def scan(root: str, *, val_fraction: float = 0.1, test_fraction: float = 0.1,
         seed: int = 0, validate: bool = True) -> ImageFolder:
  """Lists, splits and (optionally) validates the images under ``root``.

  Args:
    root: the data set folder (either layout, see the module docstring).
    val_fraction: share of each class carved out for val when there is no
      ``val/`` folder.
    test_fraction: same for test.
    seed: seed of the carving permutation.
    validate: decode every image with PIL and report corrupt files.

  Returns:
    An ``ImageFolder`` with sorted class names and per-split files/labels.
  """
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise FileNotFoundError(f"Image folder {root} does not exist; {_LAYOUT_HINT}.")
  split_dirs = _find_split_dirs(root)
  if split_dirs and "train" not in split_dirs:
    raise ValueError(
        f"{root} has {', '.join(os.path.basename(d) for d in split_dirs.values())}"
        f"/ but no train/ folder; {_LAYOUT_HINT}.")
  per_split = {split: _list_classes(d) for split, d in split_dirs.items()}
  if not per_split:
    per_split["train"] = _list_classes(root)
  class_names = tuple(per_split["train"])
  for split, classes in per_split.items():
    unknown = sorted(set(classes) - set(class_names))
    if unknown:
      raise ValueError(
          f"Classes {', '.join(unknown)} in {split_dirs[split]} have no folder "
          f"in {split_dirs['train']}; every class needs training images.")

  carve = [s for s in ("val", "test") if s not in per_split]
  fractions = {"val": val_fraction, "test": test_fraction}
  files = {split: [] for split in SPLITS}
  labels = {split: [] for split in SPLITS}
  for label, name in enumerate(class_names):
    parts = _carve(per_split["train"][name], [fractions[s] for s in carve], seed)
    assigned = {"train": parts[0], **dict(zip(carve, parts[1:]))}
    for split in SPLITS:
      if split not in assigned:
        assigned[split] = per_split[split].get(name, [])
      files[split] += assigned[split]
      labels[split] += [label] * len(assigned[split])

  for split in SPLITS:
    if not files[split]:
      where = split_dirs.get(split, f"{root} ({split} carved from train)")
      raise ValueError(
          f"Empty split {split!r}: no images for it in {where}; add images or "
          f"raise the carving fraction.")
  if validate:
    validate_images([f for split in SPLITS for f in files[split]])
  return ImageFolder(
      root=root, class_names=class_names,
      files={s: tuple(files[s]) for s in SPLITS},
      labels={s: np.asarray(labels[s], np.int32) for s in SPLITS})


def decode(path: tf.Tensor) -> tf.Tensor:
  image = tf.io.decode_image(tf.io.read_file(path), channels=3,
                             expand_animations=False)
  image.set_shape([None, None, 3])
  return image


def as_dataset(folder: ImageFolder, split: str, *, process_index: int = 0,
               process_count: int = 1, shuffle_seed: int | None = None
               ) -> tf.data.Dataset:
  """{'image': uint8 [h, w, 3], 'label': int32 []} for one split.

  Process ``i`` of ``n`` gets the contiguous ``i``-th of ``n`` near-equal
  slices, so the shards are disjoint and together cover the split. The order
  is the sorted file order unless ``shuffle_seed`` is given: then the file
  list is reshuffled every epoch, before any image is decoded.
  """
  files, labels = folder.files[split], folder.labels[split]
  lo, hi = _shard_bounds(len(files), process_index, process_count)
  ds = tf.data.Dataset.from_tensor_slices({
      "image": tf.constant(files[lo:hi], tf.string, shape=[hi - lo]),
      "label": tf.constant(labels[lo:hi], tf.int32, shape=[hi - lo]),
  })
  if shuffle_seed is not None and hi > lo:
    ds = ds.shuffle(hi - lo, seed=shuffle_seed, reshuffle_each_iteration=True)
  return ds.map(lambda x: {"image": decode(x["image"]), "label": x["label"]},
                num_parallel_calls=tf.data.AUTOTUNE)


def _shard_bounds(num_examples: int, process_index: int, process_count: int
                  ) -> tuple[int, int]:
  bounds = np.linspace(0, num_examples, process_count + 1).round().astype(int)
  return int(bounds[process_index]), int(bounds[process_index + 1])

