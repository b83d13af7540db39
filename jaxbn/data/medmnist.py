"""A TFDS builder for the 2D MedMNIST v2 data sets (28×28 pixels).

MedMNIST v2 (Yang et al., Scientific Data 2023) ships each data set as one
``<name>.npz`` with the keys ``{train,val,test}_{images,labels}``: ``uint8``
images of shape ``(N, 28, 28)`` (gray) or ``(N, 28, 28, 3)`` (RGB), and
``uint8`` labels of shape ``(N, 1)`` (single-label) or ``(N, 14)``
(ChestMNIST, multi-label 0/1).

``MedMNIST`` is a ``tfds.core.GeneratorBasedBuilder`` with one builder config
per data set in ``DATASETS`` (all twelve 2D sets)::

    builder = medmnist.get_builder("pneumoniamnist")   # finds, checks, prepares
    ds = builder.as_dataset(split="test")              # {'image', 'label'}

Where the ``.npz`` comes from (first hit wins):

1. ``npz_dir`` — an explicit directory (``config.data_dir`` in the pipeline);
2. ``$JAXBN_DATA_DIR``;
3. the package asset ``jaxbn/data/assets/`` (only PneumoniaMNIST is shipped);
4. the official Zenodo URL through the TFDS download manager, unless
   ``download=False`` or ``$JAXBN_OFFLINE=1``. Offline with no copy, a
   one-line ``FileNotFoundError`` names the file and the directory to put it
   in.

Every file is checked against the official md5 before use; a mismatch is a
one-line ``ValueError`` naming the file, both md5s and the fix. The prepared
TFDS data (PNG-encoded TFRecords; a few seconds for the small sets) is cached
in ``cache_dir``, by default ``$JAXBN_CACHE_DIR/tensorflow_datasets`` or
``~/.cache/jaxbn/tensorflow_datasets``; later calls only read it.

Splits are ``train``, ``val`` and ``test`` as in the npz, stored in npz order
(``disable_shuffling``), so example ``i`` of a split is row ``i`` of the file.
Labels are a ``ClassLabel`` for single-label sets and a ``uint8`` vector of
length 14 for ChestMNIST. RetinaMNIST's ordinal-regression task is treated as
5-class classification.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
from typing import Iterator
import urllib.parse
import urllib.request

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

ZENODO_URL = "https://zenodo.org/records/10519652/files"
HOMEPAGE = "https://medmnist.com/"
DATA_DIR_ENV = "JAXBN_DATA_DIR"
CACHE_DIR_ENV = "JAXBN_CACHE_DIR"
OFFLINE_ENV = "JAXBN_OFFLINE"  # "1": never download (as jaxbn.weights.hub).
PACKAGE_ASSET_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
SPLITS = ("train", "val", "test")
IMAGE_SIZE = 28

CITATION = """\
@article{medmnistv2,
  title={MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical \
image classification},
  author={Yang, Jiancheng and Shi, Rui and Wei, Donglai and Liu, Zequan and Zhao, Lin and \
Ke, Bilian and Pfister, Hanspeter and Ni, Bingbing},
  journal={Scientific Data},
  volume={10},
  number={1},
  pages={41},
  year={2023},
  doi={10.1038/s41597-022-01721-8}
}"""

_ORGAN_LABELS = (
    "bladder", "femur-left", "femur-right", "heart", "kidney-left",
    "kidney-right", "liver", "lung-left", "lung-right", "pancreas", "spleen",
)


@dataclasses.dataclass(frozen=True)
class MedMNISTInfo:
  """Facts about one official 28-px MedMNIST v2 file (from ``medmnist.INFO``)."""

  name: str
  md5: str
  task: str  # "binary-class" | "multi-class" | "multi-label" | "ordinal-regression"
  label_names: tuple[str, ...]
  num_channels: int  # 1 (gray) or 3 (RGB)
  num_examples: tuple[int, int, int]  # train, val, test
  source: str  # the data set MedMNIST derived it from
  license: str = "CC BY 4.0"
  # False where a horizontal flip changes the label (left/right organs).
  hflip_ok: bool = True

  @property
  def filename(self) -> str:
    return f"{self.name}.npz"

  @property
  def url(self) -> str:
    return f"{ZENODO_URL}/{self.filename}?download=1"

  @property
  def multi_label(self) -> bool:
    return self.task == "multi-label"

  @property
  def num_classes(self) -> int:
    """Number of classes (single-label) or of labels (multi-label)."""
    return len(self.label_names)


def _table(*infos: MedMNISTInfo) -> dict[str, MedMNISTInfo]:
  return {info.name: info for info in infos}


# md5s, label names, tasks and sizes from the `medmnist` package's INFO dict
# (medmnist 3.0.2; the 28-px files are the MedMNIST v2 ones).
DATASETS: dict[str, MedMNISTInfo] = _table(
    MedMNISTInfo(
        "pathmnist", "a8b06965200029087d5bd730944a56c1", "multi-class",
        ("adipose", "background", "debris", "lymphocytes", "mucus",
         "smooth muscle", "normal colon mucosa", "cancer-associated stroma",
         "colorectal adenocarcinoma epithelium"),
        3, (89996, 10004, 7180),
        "NCT-CRC-HE-100K / CRC-VAL-HE-7K colorectal histology (Kather et al., 2019)"),
    MedMNISTInfo(
        "chestmnist", "02c8a6516a18b556561a56cbdd36c4a8", "multi-label",
        ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass",
         "nodule", "pneumonia", "pneumothorax", "consolidation", "edema",
         "emphysema", "fibrosis", "pleural", "hernia"),
        1, (78468, 11219, 22433),
        "NIH ChestX-ray14 (Wang et al., CVPR 2017)"),
    MedMNISTInfo(
        "dermamnist", "0744692d530f8e62ec473284d019b0c7", "multi-class",
        ("actinic keratoses and intraepithelial carcinoma",
         "basal cell carcinoma", "benign keratosis-like lesions",
         "dermatofibroma", "melanoma", "melanocytic nevi", "vascular lesions"),
        3, (7007, 1003, 2005),
        "HAM10000 dermatoscopy (Tschandl et al., 2018; Codella et al., 2019)",
        license="CC BY-NC 4.0"),
    MedMNISTInfo(
        "octmnist", "c68d92d5b585d8d81f7112f81e2d0842", "multi-class",
        ("choroidal neovascularization", "diabetic macular edema", "drusen",
         "normal"),
        1, (97477, 10832, 1000),
        "retinal OCT (Kermany et al., Cell 2018)"),
    MedMNISTInfo(
        "pneumoniamnist", "28209eda62fecd6e6a2d98b1501bb15f", "binary-class",
        ("normal", "pneumonia"),
        1, (4708, 524, 624),
        "pediatric chest X-ray (Kermany et al., Cell 2018)"),
    MedMNISTInfo(
        "retinamnist", "bd4c0672f1bba3e3a89f0e4e876791e4", "ordinal-regression",
        ("0", "1", "2", "3", "4"),
        3, (1080, 120, 400),
        "DeepDRiD fundus, diabetic retinopathy grade 0-4 (Liu et al., 2022)"),
    MedMNISTInfo(
        "breastmnist", "750601b1f35ba3300ea97c75c52ff8f6", "binary-class",
        ("malignant", "normal, benign"),
        1, (546, 78, 156),
        "breast ultrasound (Al-Dhabyani et al., 2020)"),
    MedMNISTInfo(
        "bloodmnist", "7053d0359d879ad8a5505303e11de1dc", "multi-class",
        ("basophil", "eosinophil", "erythroblast",
         "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)",
         "lymphocyte", "monocyte", "neutrophil", "platelet"),
        3, (11959, 1712, 3421),
        "blood cell microscopy (Acevedo et al., 2020)"),
    MedMNISTInfo(
        "tissuemnist", "ebe78ee8b05294063de985d821c1c34b", "multi-class",
        ("Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
         "Glomerular endothelial cells", "Interstitial endothelial cells",
         "Leukocytes", "Podocytes", "Proximal Tubule Segments",
         "Thick Ascending Limb"),
        1, (165466, 23640, 47280),
        "BBBC051 kidney cortex microscopy (Ljosa et al., 2012)"),
    MedMNISTInfo(
        "organamnist", "68e3f8846a6bd62f0c9bf841c0d9eacc", "multi-class",
        _ORGAN_LABELS, 1, (34561, 6491, 17778),
        "LiTS abdominal CT, axial (Bilic et al., 2019; Xu et al., 2019)",
        hflip_ok=False),
    MedMNISTInfo(
        "organcmnist", "b9ceb9546e10131b32923c5bbeaea2b1", "multi-class",
        _ORGAN_LABELS, 1, (12975, 2392, 8216),
        "LiTS abdominal CT, coronal (Bilic et al., 2019; Xu et al., 2019)",
        hflip_ok=False),
    MedMNISTInfo(
        "organsmnist", "9ab87b696fb54e2a387ebe992d6ed5f1", "multi-class",
        _ORGAN_LABELS, 1, (13932, 2452, 8827),
        "LiTS abdominal CT, sagittal (Bilic et al., 2019; Xu et al., 2019)",
        hflip_ok=False),
)


def get_info(name: str) -> MedMNISTInfo:
  """Returns the table entry for a MedMNIST data set name."""
  if name not in DATASETS:
    raise ValueError(
        f"Unknown MedMNIST data set {name!r}; known: {', '.join(DATASETS)}.")
  return DATASETS[name]


def offline() -> bool:
  """True when ``$JAXBN_OFFLINE`` forbids downloads."""
  return os.environ.get(OFFLINE_ENV, "") not in ("", "0")


def default_cache_dir() -> str:
  """Where prepared TFDS data goes: ``$JAXBN_CACHE_DIR/tensorflow_datasets``."""
  root = os.environ.get(CACHE_DIR_ENV) or os.path.join("~", ".cache", "jaxbn")
  return os.path.join(os.path.expanduser(root), "tensorflow_datasets")


def md5sum(path: str, chunk_size: int = 1 << 20) -> str:
  digest = hashlib.md5()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(chunk_size), b""):
      digest.update(chunk)
  return digest.hexdigest()


def search_dirs(npz_dir: str | None = None, *,
                use_package_asset: bool = True) -> list[str]:
  """Directories searched for ``<name>.npz``, in order."""
  dirs = []
  if npz_dir:
    dirs.append(os.path.expanduser(os.fspath(npz_dir)))
  if os.environ.get(DATA_DIR_ENV):
    dirs.append(os.path.expanduser(os.environ[DATA_DIR_ENV]))
  if use_package_asset:
    dirs.append(PACKAGE_ASSET_DIR)
  return dirs


def find_npz(name: str, npz_dir: str | None = None, *,
             use_package_asset: bool = True) -> str | None:
  """Returns the first local copy of ``<name>.npz``, or None."""
  filename = get_info(name).filename
  for directory in search_dirs(npz_dir, use_package_asset=use_package_asset):
    path = os.path.join(directory, filename)
    if os.path.isfile(path):
      return path
  return None


def verify_md5(path: str, info: MedMNISTInfo) -> None:
  """Raises a one-line ValueError unless ``path`` has the official md5."""
  actual = md5sum(path)
  if actual != info.md5:
    raise ValueError(
        f"MD5 mismatch for {path}: expected {info.md5} (official MedMNIST v2 "
        f"{info.filename}), got {actual}; the file is corrupt or not the "
        f"official 28-px release - delete it and download {info.url} again.")


def missing_file_message(info: MedMNISTInfo, npz_dir: str | None,
                         searched: list[str], reason: str) -> str:
  """One line: which file is missing, where we looked, where to put it."""
  target = npz_dir or os.environ.get(DATA_DIR_ENV)
  where = (f"place it in {target}" if target else
           f"place it in a directory and point config.data_dir (or "
           f"${DATA_DIR_ENV}) at it")
  return (
      f"MedMNIST file {info.filename} not found (looked in: "
      f"{', '.join(searched) or 'nowhere'}) and {reason}; download {info.url} "
      f"(md5 {info.md5}) and {where}.")


def unreachable(url: str, timeout: float = 5.0) -> str | None:
  """Why ``url``'s host cannot be reached, or None if it (or a proxy) can.

  A quick probe: offline, the download manager would otherwise spend minutes
  retrying before it gives up.
  """
  if urllib.request.getproxies().get("https"):
    return None  # Let the proxy decide.
  host = urllib.parse.urlparse(url).hostname
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return None
  except OSError as e:
    return f"{host} is unreachable: {type(e).__name__}: {e}"


def _check_labels(labels: np.ndarray, info: MedMNISTInfo, split: str,
                  path: str) -> None:
  """Rejects label arrays that cannot belong to ``info``'s task."""
  where = f"{path} [{split}_labels]"
  if info.multi_label:
    if labels.ndim != 2 or labels.shape[1] != info.num_classes:
      raise ValueError(
          f"Mislabelled data set: {where} has shape {labels.shape}, expected "
          f"(N, {info.num_classes}) multi-label 0/1 rows for {info.name}.")
    bad = ~np.isin(labels, (0, 1))
    expected = "0 or 1"
  else:
    if labels.ndim != 2 or labels.shape[1] != 1:
      raise ValueError(
          f"Mislabelled data set: {where} has shape {labels.shape}, expected "
          f"(N, 1) class indices for {info.name}.")
    bad = (labels < 0) | (labels >= info.num_classes)
    expected = f"in [0, {info.num_classes})"
  if bad.any():
    row = int(np.argwhere(bad)[0][0])
    raise ValueError(
        f"Mislabelled data set: {where} row {row} has label "
        f"{labels[row].tolist()}, expected {expected} for {info.name} "
        f"({int(bad.any(axis=-1).sum())} bad rows).")


def load_npz(path: str, info: MedMNISTInfo
             ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads and validates the three splits: split -> (images, labels)."""
  out = {}
  with np.load(path) as npz:
    for split in SPLITS:
      keys = (f"{split}_images", f"{split}_labels")
      missing = [k for k in keys if k not in npz.files]
      if missing:
        raise ValueError(
            f"{path} lacks {', '.join(missing)}; a MedMNIST npz holds "
            f"{{train,val,test}}_{{images,labels}}.")
      images, labels = npz[keys[0]], npz[keys[1]]
      expected = (IMAGE_SIZE, IMAGE_SIZE) + ((3,) if info.num_channels == 3 else ())
      if images.dtype != np.uint8 or images.shape[1:] != expected:
        raise ValueError(
            f"{path} [{keys[0]}] is {images.dtype}{list(images.shape)}, expected "
            f"uint8[N, {', '.join(map(str, expected))}] for {info.name}.")
      if len(images) == 0:
        raise ValueError(f"Empty split: {path} has no {split} images.")
      if len(labels) != len(images):
        raise ValueError(
            f"{path}: {len(images)} {split} images but {len(labels)} labels.")
      _check_labels(labels, info, split, path)
      out[split] = (images, labels)
  return out


class MedMNIST(tfds.core.GeneratorBasedBuilder):
  """The 2D MedMNIST v2 data sets at 28×28; one builder config per data set."""

  name = "medmnist"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "MedMNIST v2 28-px npz files (Zenodo 10519652)."}
  # TFDS derives this via `importlib_resources`, which tensorflow-datasets 4.9
  # only declares for Python < 3.9; set it directly (no checksums file here:
  # `verify_md5` checks the npz).
  code_path = epath.Path(__file__)
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name=info.name,
          description=(f"{info.name}: {info.task}, {info.num_classes} "
                       f"{'labels' if info.multi_label else 'classes'}, "
                       f"from {info.source}; {info.license}."))
      for info in DATASETS.values()
  ]

  def __init__(self, *, npz_dir: str | None = None, download: bool = True,
               use_package_asset: bool = True, **kwargs):
    """Like any TFDS builder, plus where to look for the npz.

    Args:
      npz_dir: directory searched first for ``<name>.npz``.
      download: fetch the official file when no local copy exists.
      use_package_asset: also look in ``jaxbn/data/assets``.
      **kwargs: ``data_dir``, ``config``, ... of ``tfds.core.DatasetBuilder``.
    """
    self._npz_dir = npz_dir
    self._download = download
    self._use_package_asset = use_package_asset
    super().__init__(**kwargs)

  @property
  def medmnist_info(self) -> MedMNISTInfo:
    # Looked up at call time, so that tests can swap table entries.
    return get_info(self.builder_config.name)

  def _info(self) -> tfds.core.DatasetInfo:
    info = self.medmnist_info
    shape = (IMAGE_SIZE, IMAGE_SIZE, info.num_channels)
    if info.multi_label:
      label = tfds.features.Tensor(shape=(info.num_classes,), dtype=np.uint8)
    else:
      label = tfds.features.ClassLabel(names=list(info.label_names))
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=shape),
            "label": label,
        }),
        supervised_keys=("image", "label"),
        disable_shuffling=True,
        homepage=HOMEPAGE,
        citation=CITATION,
        license=info.license,
    )

  def _locate_npz(self, dl_manager: tfds.download.DownloadManager) -> str:
    info = self.medmnist_info
    path = find_npz(info.name, self._npz_dir,
                    use_package_asset=self._use_package_asset)
    if path is not None:
      return path
    searched = search_dirs(self._npz_dir,
                           use_package_asset=self._use_package_asset)
    if not self._download or offline():
      why = "download=False" if not self._download else f"${OFFLINE_ENV} is set"
      raise FileNotFoundError(missing_file_message(
          info, self._npz_dir, searched, f"downloading is disabled ({why})"))
    reason = unreachable(info.url)
    if reason:
      raise FileNotFoundError(missing_file_message(
          info, self._npz_dir, searched, f"cannot be downloaded ({reason})"))
    try:
      return os.fspath(dl_manager.download(info.url))
    except Exception as e:  # pylint: disable=broad-except
      detail = (str(e).strip().splitlines() or [""])[0]
      detail = detail if len(detail) <= 160 else detail[:160] + "..."
      raise FileNotFoundError(missing_file_message(
          info, self._npz_dir, searched,
          f"downloading failed ({type(e).__name__}: {detail})")) from e

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    info = self.medmnist_info
    path = self._locate_npz(dl_manager)
    verify_md5(path, info)
    arrays = load_npz(path, info)
    return {split: self._generate_examples(*arrays[split]) for split in SPLITS}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray
                         ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    if images.ndim == 3:
      images = images[..., None]
    multi_label = self.medmnist_info.multi_label
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": label if multi_label else int(label[0])}


def get_builder(name: str, *, npz_dir: str | None = None,
                cache_dir: str | None = None, download: bool = True,
                use_package_asset: bool = True) -> MedMNIST:
  """Returns the prepared ``MedMNIST`` builder for ``name``.

  Preparing reads (or downloads) and checks the npz once and writes TFRecords
  to ``cache_dir``; afterwards this only reads ``dataset_info.json``.

  Args:
    name: a key of ``DATASETS``, e.g. ``"pneumoniamnist"``.
    npz_dir: directory searched first for ``<name>.npz``.
    cache_dir: TFDS data_dir for the prepared data (``default_cache_dir()``).
    download: allow downloading the official file from Zenodo.
    use_package_asset: also look for the npz in ``jaxbn/data/assets``.
  """
  get_info(name)  # Clear error for unknown names.
  builder = MedMNIST(
      config=name, data_dir=cache_dir or default_cache_dir(), npz_dir=npz_dir,
      download=download, use_package_asset=use_package_asset)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      try_download_gcs=False,
      compute_stats=tfds.download.ComputeStatsMode.SKIP))
  return builder
