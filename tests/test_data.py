"""Tests of the input pipeline (jaxbn.data): MedMNIST, TFDS catalog, folders."""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from jaxbn import data as jaxbn_data
from jaxbn.data import image_folder
from jaxbn.data import medmnist
from jaxbn.data import pipeline

ASSET = os.path.join(medmnist.PACKAGE_ASSET_DIR, "pneumoniamnist.npz")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
  """No user data dirs; every cache in tmp."""
  monkeypatch.delenv(medmnist.DATA_DIR_ENV, raising=False)
  monkeypatch.setenv(medmnist.OFFLINE_ENV, "1")
  monkeypatch.setenv(medmnist.CACHE_DIR_ENV,
                     str(tmp_path_factory.getbasetemp() / "jaxbn_cache"))


@pytest.fixture(scope="module")
def pneumonia_config(tmp_path_factory):
  return ml_collections.ConfigDict(dict(
      name="pneumoniamnist", data_dir=None, download=False,
      cache_dir=str(tmp_path_factory.mktemp("tfds")), augment=True,
      shuffle_buffer=256, cache=True))


@pytest.fixture(scope="module")
def pneumonia_npz():
  with np.load(ASSET) as npz:
    return {k: npz[k] for k in npz.files}


def _normalised(images_uint8: np.ndarray, mean=MEAN, std=STD) -> np.ndarray:
  """Reference normalisation of gray uint8 [N, h, w] images."""
  x = np.repeat(images_uint8[..., None].astype(np.float32) / 255.0, 3, axis=-1)
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def _eval_all(config, split, process_index=0, process_count=1, batch_size=100,
              image_size=28):
  batches = list(pipeline.eval_iterator(
      config, split, batch_size=batch_size, image_size=image_size, mean=MEAN,
      std=STD, process_index=process_index, process_count=process_count))
  return batches


def _real(batches, key):
  return np.concatenate([b[key][b["mask"] == 1] for b in batches])


def _write_synthetic_npz(path, num_labels, *, multi_label, bad_label=None,
                         sizes=(20, 6, 5), rgb=False, seed=0):
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n in zip(medmnist.SPLITS, sizes):
    shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
    arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
    if multi_label:
      labels = rng.integers(0, 2, (n, num_labels), dtype=np.uint8)
    else:
      labels = rng.integers(0, num_labels, (n, 1), dtype=np.uint8)
    arrays[f"{split}_labels"] = labels
  if bad_label is not None:
    arrays["val_labels"][3, 0] = bad_label
  np.savez(path, **arrays)
  return arrays


def _trust_md5(monkeypatch, name, path):
  """Lets a synthetic npz stand in for the official file in this test."""
  entry = dataclasses.replace(medmnist.DATASETS[name], md5=medmnist.md5sum(path))
  monkeypatch.setitem(medmnist.DATASETS, name, entry)


# ---------------------------------------------------------------- MedMNIST --


def test_shipped_pneumoniamnist_loads_offline(pneumonia_config):
  assert medmnist.md5sum(ASSET) == medmnist.DATASETS["pneumoniamnist"].md5
  info = pipeline.get_dataset_info(pneumonia_config)
  assert info == pipeline.DatasetInfo(
      name="pneumoniamnist", num_classes=2, multi_label=False,
      class_names=("normal", "pneumonia"),
      num_examples={"train": 4708, "val": 524, "test": 624})
  assert jaxbn_data.get_dataset_info is pipeline.get_dataset_info


def test_train_batches_shapes_dtypes_and_determinism(pneumonia_config):
  kwargs = dict(batch_size=16, image_size=64, mean=MEAN, std=STD)
  first = next(pipeline.train_iterator(pneumonia_config, seed=3, **kwargs))
  again = next(pipeline.train_iterator(pneumonia_config, seed=3, **kwargs))
  other = next(pipeline.train_iterator(pneumonia_config, seed=4, **kwargs))
  assert set(first) == {"image", "label"}
  assert first["image"].shape == (16, 64, 64, 3)
  assert first["image"].dtype == np.float32
  assert first["label"].shape == (16,) and first["label"].dtype == np.int32
  assert set(np.unique(first["label"])) <= {0, 1}
  np.testing.assert_array_equal(first["image"], again["image"])
  assert not np.array_equal(first["image"], other["image"])
  # Gray input: after normalisation the channels are affine images of each
  # other; pixel 0 lies in the normalised range of [0, 1] inputs.
  lo, hi = _normalised(np.array([[0, 255]], np.uint8))[0]
  assert np.all(first["image"] >= lo - 1e-4) and np.all(first["image"] <= hi + 1e-4)
  ch0 = (first["image"][..., 0] * STD[0] + MEAN[0])
  ch2 = (first["image"][..., 2] * STD[2] + MEAN[2])
  np.testing.assert_allclose(ch0, ch2, atol=1e-5)


def test_eval_padding_and_mask_cover_every_example_once(pneumonia_config,
                                                         pneumonia_npz):
  batches = _eval_all(pneumonia_config, "test", batch_size=100)
  assert len(batches) == 7  # ceil(624 / 100)
  for b in batches:
    assert b["image"].shape == (100, 28, 28, 3) and b["image"].dtype == np.float32
    assert b["label"].dtype == np.int32 and b["mask"].dtype == np.float32
  masks = np.concatenate([b["mask"] for b in batches])
  np.testing.assert_array_equal(masks, np.r_[np.ones(624), np.zeros(76)])
  # Real examples come in npz order, normalised exactly as documented.
  np.testing.assert_array_equal(_real(batches, "label"),
                                pneumonia_npz["test_labels"][:, 0])
  np.testing.assert_allclose(_real(batches, "image"),
                             _normalised(pneumonia_npz["test_images"]), atol=1e-5)
  assert np.all(batches[-1]["image"][24:] == 0)
  assert len(_eval_all(pneumonia_config, "validation", batch_size=524)) == 1


@pytest.mark.parametrize("process_count", [2, 3])
def test_per_host_shards_are_disjoint_and_cover_the_split(
    pneumonia_config, pneumonia_npz, process_count):
  shards = [_eval_all(pneumonia_config, "val", i, process_count, batch_size=64)
            for i in range(process_count)]
  assert len({len(s) for s in shards}) == 1  # Same number of steps everywhere.
  # Batch k of every process, concatenated in process order (what the trainer's
  # gather assembles): the split in stored order, as one process reads it.
  merged = [{k: np.concatenate([s[b][k] for s in shards]) for k in shards[0][b]}
            for b in range(len(shards[0]))]
  labels, images = _real(merged, "label"), _real(merged, "image")
  assert len(labels) == 524
  np.testing.assert_array_equal(labels, pneumonia_npz["val_labels"][:, 0])
  np.testing.assert_allclose(images, _normalised(pneumonia_npz["val_images"]),
                             atol=1e-5)


def test_train_epochs_are_permutations_of_the_split(pneumonia_config, pneumonia_npz):
  config = ml_collections.ConfigDict(pneumonia_config.to_dict())
  config.augment = False
  kwargs = dict(batch_size=2354, image_size=28, mean=0.0, std=1.0, seed=0, process_count=2)
  host0 = pipeline.train_iterator(config, process_index=0, with_index=True, **kwargs)
  host1 = pipeline.train_iterator(config, process_index=1, with_index=True, **kwargs)
  # Global batch = one epoch here; the two processes read its two halves.
  epoch1 = {k: np.concatenate([a, b]) for (k, a), b in
            zip(next(host0).items(), next(host1).values())}
  epoch2 = np.concatenate([next(host0)["index"], next(host1)["index"]])
  # Each epoch is a new permutation of all 4708 examples.
  np.testing.assert_array_equal(np.sort(epoch1["index"]), np.arange(4708))
  np.testing.assert_array_equal(np.sort(epoch2), np.arange(4708))
  assert not np.array_equal(epoch1["index"], epoch2)
  # 'index' names the example: no augmentation, 28 → 28, exact pixels and labels.
  np.testing.assert_allclose(epoch1["image"][..., 0] * 255,
                             pneumonia_npz["train_images"][epoch1["index"]], atol=1e-3)
  np.testing.assert_array_equal(epoch1["label"],
                                pneumonia_npz["train_labels"][epoch1["index"], 0])


@pytest.mark.parametrize("process_count", [2, 4])
def test_global_batches_do_not_depend_on_the_process_count(pneumonia_config, process_count):
  # Augmented: crops and flips are drawn per stream position, not per process.
  kwargs = dict(image_size=32, mean=MEAN, std=STD, seed=5)
  one = pipeline.train_iterator(pneumonia_config, batch_size=64, with_index=True, **kwargs)
  parts = [pipeline.train_iterator(pneumonia_config, batch_size=64 // process_count,
                                   process_index=i, process_count=process_count,
                                   with_index=True, **kwargs) for i in range(process_count)]
  for _ in range(3):
    whole, split = next(one), [next(p) for p in parts]
    for key in whole:
      np.testing.assert_array_equal(whole[key], np.concatenate([s[key] for s in split]))


@pytest.mark.parametrize("cache", [True, False])
def test_start_step_reads_batch_k_directly(pneumonia_config, cache):
  config = ml_collections.ConfigDict(pneumonia_config.to_dict())
  config.cache = cache  # decoded in memory, or PNG bytes decoded per example
  kwargs = dict(batch_size=48, image_size=32, mean=MEAN, std=STD, seed=1, with_index=True)
  # 100 batches of 48 cross the epoch boundary at position 4708.
  stream = pipeline.train_iterator(pneumonia_config, **kwargs)
  batches = [next(stream) for _ in range(100)]
  resumed = pipeline.train_iterator(config, start_step=98, **kwargs)
  for k in (98, 99):
    got = next(resumed)
    np.testing.assert_array_equal(got["index"], batches[k]["index"])
    np.testing.assert_allclose(got["image"], batches[k]["image"], atol=1e-6)
  # Positions p -> example index_shuffle(p mod N, [seed, p div N]): pure in (seed, p).
  positions = 98 * 48 + np.arange(48)
  np.testing.assert_array_equal(
      [int(pipeline.example_index(p, 4708, 1)) for p in positions], batches[98]["index"])


def test_md5_mismatch_is_a_one_line_error(tmp_path):
  data_dir = tmp_path / "npz"
  data_dir.mkdir()
  corrupt = bytearray(open(ASSET, "rb").read())
  corrupt[1000] ^= 0xFF
  (data_dir / "pneumoniamnist.npz").write_bytes(bytes(corrupt))
  config = ml_collections.ConfigDict(dict(
      name="pneumoniamnist", data_dir=str(data_dir), download=False,
      cache_dir=str(tmp_path / "tfds")))
  with pytest.raises(ValueError, match="MD5 mismatch") as e:
    pipeline.get_dataset_info(config)
  message = str(e.value)
  assert "\n" not in message
  assert str(data_dir / "pneumoniamnist.npz") in message
  assert medmnist.DATASETS["pneumoniamnist"].md5 in message
  assert "download" in message


def test_missing_npz_offline_names_file_and_directory(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError) as e:
    medmnist.get_builder("pneumoniamnist", npz_dir=str(empty),
                         cache_dir=str(tmp_path / "tfds"), download=False,
                         use_package_asset=False)
  message = str(e.value)
  assert "\n" not in message
  assert "pneumoniamnist.npz" in message and f"place it in {empty}" in message
  assert "download=False" in message
  # Through the pipeline, for a set that is not shipped.
  config = ml_collections.ConfigDict(dict(
      name="retinamnist", data_dir=str(empty), download=False,
      cache_dir=str(tmp_path / "tfds")))
  with pytest.raises(FileNotFoundError, match="retinamnist.npz"):
    pipeline.get_dataset_info(config)
  config.download = True  # $JAXBN_OFFLINE=1 (set for all tests) still wins.
  with pytest.raises(FileNotFoundError, match="JAXBN_OFFLINE is set"):
    pipeline.get_dataset_info(config)


def test_offline_or_failed_download_gives_the_same_hint(tmp_path, monkeypatch):
  def failed_download(self, url):
    raise ConnectionError(f"Could not resolve host for {url}\nmore detail")

  # Never touch the network: fake an offline probe, then a failed download.
  monkeypatch.delenv(medmnist.OFFLINE_ENV)
  monkeypatch.setattr(tfds.download.DownloadManager, "download", failed_download)
  monkeypatch.setattr(medmnist, "unreachable", lambda url: "zenodo.org: offline")
  kwargs = dict(npz_dir=str(tmp_path), cache_dir=str(tmp_path / "tfds"),
                download=True)
  with pytest.raises(FileNotFoundError, match="cannot be downloaded .*offline"):
    medmnist.get_builder("breastmnist", **kwargs)
  monkeypatch.setattr(medmnist, "unreachable", lambda url: None)
  with pytest.raises(FileNotFoundError, match="downloading failed") as e:
    medmnist.get_builder("breastmnist", **kwargs)
  assert "breastmnist.npz" in str(e.value) and "\n" not in str(e.value)
  assert f"place it in {tmp_path}" in str(e.value)


def test_multi_label_chestmnist_style(tmp_path, monkeypatch):
  path = tmp_path / "chestmnist.npz"
  arrays = _write_synthetic_npz(path, 14, multi_label=True)
  _trust_md5(monkeypatch, "chestmnist", str(path))
  config = ml_collections.ConfigDict(dict(
      name="chestmnist", data_dir=str(tmp_path), download=False,
      cache_dir=str(tmp_path / "tfds"), shuffle_buffer=100))
  info = pipeline.get_dataset_info(config)
  assert info.multi_label and info.num_classes == 14
  assert info.class_names[0] == "atelectasis" and len(info.class_names) == 14
  assert info.num_examples == {"train": 20, "val": 6, "test": 5}
  batch = next(pipeline.train_iterator(config, batch_size=8, image_size=32,
                                       mean=MEAN, std=STD, seed=0))
  assert batch["label"].shape == (8, 14) and batch["label"].dtype == np.float32
  assert set(np.unique(batch["label"])) <= {0.0, 1.0}
  batches = _eval_all(config, "test", batch_size=4)
  assert len(batches) == 2
  np.testing.assert_array_equal(_real(batches, "label"), arrays["test_labels"])
  # More processes than examples: empty shards still run the same steps.
  shards = [_eval_all(config, "test", i, 8, batch_size=2) for i in range(8)]
  assert {len(s) for s in shards} == {1}
  np.testing.assert_array_equal(
      np.concatenate([_real(s, "label") for s in shards]), arrays["test_labels"])


def test_mislabelled_npz_is_rejected(tmp_path, monkeypatch):
  path = tmp_path / "breastmnist.npz"
  _write_synthetic_npz(path, 2, multi_label=False, bad_label=7)
  _trust_md5(monkeypatch, "breastmnist", str(path))
  config = ml_collections.ConfigDict(dict(
      name="breastmnist", data_dir=str(tmp_path), download=False,
      cache_dir=str(tmp_path / "tfds")))
  with pytest.raises(ValueError, match=r"Mislabelled.*val_labels.*row 3"):
    pipeline.get_dataset_info(config)


def test_rgb_medmnist_from_data_dir(tmp_path, monkeypatch):
  path = tmp_path / "bloodmnist.npz"
  arrays = _write_synthetic_npz(path, 8, multi_label=False, rgb=True)
  _trust_md5(monkeypatch, "bloodmnist", str(path))
  monkeypatch.setenv(medmnist.DATA_DIR_ENV, str(tmp_path))  # Found via env.
  config = ml_collections.ConfigDict(dict(
      name="bloodmnist", download=False, cache_dir=str(tmp_path / "tfds")))
  batches = _eval_all(config, "val", batch_size=6)
  expected = ((arrays["val_images"] / 255.0 - MEAN) / STD).astype(np.float32)
  np.testing.assert_allclose(_real(batches, "image"), expected, atol=1e-5)


def test_retinamnist_shaped_file_from_data_dir(tmp_path, monkeypatch):
  """A file with the official RetinaMNIST keys, dtypes and shapes (5 classes, RGB
  uint8 28x28 images, (N, 1) uint8 labels), smaller than the real 1080/120/400."""
  path = tmp_path / "retinamnist.npz"
  arrays = _write_synthetic_npz(path, 5, multi_label=False, rgb=True, sizes=(40, 70, 9))
  assert arrays["train_images"].dtype == np.uint8 and arrays["train_labels"].shape == (40, 1)
  _trust_md5(monkeypatch, "retinamnist", str(path))
  config = ml_collections.ConfigDict(dict(
      name="retinamnist", data_dir=str(tmp_path),
      download=False, cache_dir=str(tmp_path / "tfds")))
  info = pipeline.get_dataset_info(config)
  assert (info.num_classes, info.multi_label) == (5, False)
  assert info.num_examples == {"train": 40, "val": 70, "test": 9}
  batches = _eval_all(config, "val", batch_size=64, image_size=32)
  assert len(batches) == 2 and int(sum(b["mask"].sum() for b in batches)) == 70
  assert batches[0]["image"].shape == (64, 32, 32, 3)
  np.testing.assert_array_equal(_real(batches, "label"), arrays["val_labels"][:, 0])


def test_unknown_names_list_the_choices():
  with pytest.raises(ValueError, match="pneumoniamnist.*tfds:") as e:
    pipeline.get_dataset_info(ml_collections.ConfigDict(dict(name="cifar11")))
  assert "folder:" in str(e.value)
  with pytest.raises(ValueError, match="Unknown data set 'tfds:no_such_set_x'"):
    pipeline.get_dataset_info(
        ml_collections.ConfigDict(dict(name="tfds:no_such_set_x")))
  with pytest.raises(ValueError, match="Unknown split"):
    pipeline.eval_iterator(ml_collections.ConfigDict(dict(name="cifar11")),
                           "dev", batch_size=2, image_size=8, mean=0, std=1)


# -------------------------------------------------------------- transforms --


@pytest.mark.parametrize("shape,size", [((28, 28, 1), 64), ((40, 30, 3), 24)])
def test_preprocess_equals_the_documented_order(shape, size):
  """decode → RGB → resize → scale → normalise, whatever order it runs in."""
  image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  scale, offset = pipeline._normalizer(MEAN, STD)  # pylint: disable=protected-access
  example = {"image": tf.constant(image), "label": tf.constant(1)}
  out = pipeline.preprocess(example, image_size=size, scale=scale,
                            offset=offset, multi_label=False)["image"].numpy()
  rgb = np.repeat(image, 3, axis=-1) if shape[-1] == 1 else image
  resized = tf.image.resize(rgb.astype(np.float32), (size, size),
                            antialias=size < max(shape[:2])).numpy()
  np.testing.assert_allclose(out, (resized / 255.0 - MEAN) / STD, atol=1e-4)
  # The flip is drawn on the source image; it equals flipping the output.
  flips = [pipeline.preprocess(example, image_size=size, scale=scale,
                               offset=offset, multi_label=False, hflip=True,
                               seed=tf.constant([i, 0]))["image"].numpy()
           for i in range(8)]
  mirrored = [np.allclose(f, out[:, ::-1], atol=1e-4) for f in flips]
  same = [np.allclose(f, out, atol=1e-4) for f in flips]
  assert all(m or s for m, s in zip(mirrored, same)) and any(mirrored) and any(same)


@pytest.mark.parametrize("method", ["bicubic", "lanczos3", "area", "nearest"])
def test_resize_method_is_the_documented_order_with_that_method(method):
  # The normalisation commutes with every method (linear, weights summing to 1), up- and down.
  scale, offset = pipeline._normalizer(MEAN, STD)  # pylint: disable=protected-access
  for shape, size in [((28, 28, 1), 64), ((40, 30, 3), 24)]:
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    out = pipeline.preprocess({"image": tf.constant(image), "label": tf.constant(0)},
                              image_size=size, scale=scale, offset=offset, multi_label=False,
                              resize=method)["image"].numpy()
    rgb = np.repeat(image, 3, axis=-1) if shape[-1] == 1 else image
    resized = tf.image.resize(rgb.astype(np.float32), (size, size), method=method,
                              antialias=size < max(shape[:2])).numpy()
    np.testing.assert_allclose(out, (resized / 255.0 - MEAN) / STD, atol=1e-3)


def test_the_data_configs_resize_reaches_training_and_evaluation(pneumonia_config, pneumonia_npz):
  nearest = ml_collections.ConfigDict({**pneumonia_config.to_dict(), "resize": "nearest"})
  batch = _eval_all(nearest, "test", batch_size=100, image_size=56)[0]
  twice = np.repeat(np.repeat(pneumonia_npz["test_images"][:100], 2, axis=1), 2, axis=2)
  np.testing.assert_allclose(batch["image"], _normalised(twice), atol=1e-5)  # 28 → 56: 2×2 blocks
  kwargs = dict(batch_size=8, image_size=56, mean=MEAN, std=STD, seed=0)
  plain = next(pipeline.train_iterator(pneumonia_config, **kwargs))["image"]
  blocky = next(pipeline.train_iterator(nearest, **kwargs))["image"]
  assert not np.allclose(plain, blocky, atol=1e-3)


def test_flip_default_is_off_where_it_swaps_labels():
  assert not medmnist.DATASETS["organamnist"].hflip_ok
  assert medmnist.DATASETS["pneumoniamnist"].hflip_ok


# ------------------------------------------------------------ TFDS catalog --


class JaxbnTestTinyImages(tfds.core.GeneratorBasedBuilder):
  """A catalog-style data set with only a 'train' split (3 classes)."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "id": tfds.features.Text(),
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
        }),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    rng = np.random.default_rng(0)
    for i in range(50):
      size = (int(rng.integers(20, 40)), int(rng.integers(20, 40)), 3)
      yield i, {"id": str(i), "label": i % 3,
                "image": rng.integers(0, 256, size, dtype=np.uint8)}


def test_tfds_catalog_dataset_carves_missing_splits(tmp_path, monkeypatch):
  config = ml_collections.ConfigDict(dict(
      name="tfds:jaxbn_test_tiny_images", data_dir=str(tmp_path)))
  with pytest.raises(FileNotFoundError, match="not prepared .*JAXBN_OFFLINE"):
    pipeline.get_dataset_info(config)
  monkeypatch.delenv(medmnist.OFFLINE_ENV)  # Preparing it needs no network.
  info = pipeline.get_dataset_info(config)
  assert info.num_classes == 3 and info.class_names == ("a", "b", "c")
  assert info.num_examples == {"train": 40, "val": 5, "test": 5}
  batch = next(pipeline.train_iterator(config, batch_size=8, image_size=24,
                                       mean=MEAN, std=STD, seed=0))
  assert batch["image"].shape == (8, 24, 24, 3)
  batches = _eval_all(config, "test", batch_size=4, image_size=24)
  assert _real(batches, "label").shape == (5,)


def test_tfds_split_mapping():
  assert pipeline.tfds_splits(["train", "validation", "test"]) == {
      "train": "train", "val": "validation", "test": "test"}
  assert pipeline.tfds_splits(["train", "test"])["val"] == "train[:10%]"
  assert pipeline.tfds_splits(["train"]) == {
      "train": "train[:80%]", "val": "train[80%:90%]", "test": "train[90%:]"}


# ------------------------------------------------------------ image folder --


def _png(path, size=(10, 12), mode="RGB", seed=0):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
  Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)


def _make_split_folder(root):
  for split, n in (("train", 4), ("val", 2), ("test", 2)):
    for c, cls in enumerate(("dog", "cat")):
      for i in range(n):
        ext = "jpg" if i == 1 else "png"
        _png(os.path.join(root, split, cls, f"{i}.{ext}"),
             size=(10 + i, 12), mode="L" if c else "RGB", seed=i)


def test_image_folder_split_layout(tmp_path):
  root = str(tmp_path / "xray")
  _make_split_folder(root)
  (tmp_path / "xray" / "train" / "cat" / "notes.txt").write_text("ignored")
  config = ml_collections.ConfigDict(dict(name=f"folder:{root}"))
  info = pipeline.get_dataset_info(config)
  assert info.class_names == ("cat", "dog") and info.num_classes == 2
  assert info.num_examples == {"train": 8, "val": 4, "test": 4}
  batch = next(pipeline.train_iterator(config, batch_size=4, image_size=16,
                                       mean=MEAN, std=STD, seed=0))
  assert batch["image"].shape == (4, 16, 16, 3)
  batches = _eval_all(config, "val", batch_size=3, image_size=16)
  np.testing.assert_array_equal(_real(batches, "label"), [0, 0, 1, 1])
  halves = [_eval_all(config, "train", i, 2, batch_size=3, image_size=16) for i in range(2)]
  # Batch k of both processes, in process order: the split as one process reads it.
  merged = [{k: np.concatenate([h[b][k] for h in halves]) for k in halves[0][b]}
            for b in range(len(halves[0]))]
  np.testing.assert_array_equal(_real(merged, "label"), [0] * 4 + [1] * 4)
  shards = [_eval_all(config, "test", i, 6, batch_size=2, image_size=16)
            for i in range(6)]
  assert sum(int(b["mask"].sum()) for s in shards for b in s) == 4


def test_image_folder_single_layout_is_stratified_and_deterministic(tmp_path):
  for cls in ("benign", "malignant"):
    for i in range(10):
      _png(str(tmp_path / cls / f"{i:02d}.png"), size=(8, 8), seed=i)
  first = image_folder.scan(str(tmp_path))
  again = image_folder.scan(str(tmp_path))
  assert first.files == again.files
  assert first.num_examples == {"train": 16, "val": 2, "test": 2}
  for split in ("val", "test"):
    np.testing.assert_array_equal(first.labels[split], [0, 1])
  all_files = sum((list(first.files[s]) for s in image_folder.SPLITS), [])
  assert len(set(all_files)) == 20


def test_image_folder_errors(tmp_path):
  one = tmp_path / "one"
  _png(str(one / "only" / "a.png"))
  with pytest.raises(ValueError, match=r"Found 1 class folder\(s\) \(only\) in .*one"):
    image_folder.scan(str(one))

  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(ValueError, match="Found 0 class folder"):
    image_folder.scan(str(empty))

  no_images = tmp_path / "no_images"
  _png(str(no_images / "a" / "x.png"))
  (no_images / "b").mkdir()
  with pytest.raises(ValueError, match="Empty class folder .*no_images/b"):
    image_folder.scan(str(no_images))

  corrupt = tmp_path / "corrupt"
  _make_split_folder(str(corrupt))
  bad = corrupt / "val" / "cat" / "broken.png"
  bad.write_bytes(open(corrupt / "val" / "cat" / "0.png", "rb").read()[:40])
  with pytest.raises(ValueError, match="corrupt image file.*broken.png"):
    pipeline.get_dataset_info(
        ml_collections.ConfigDict(dict(name=f"folder:{corrupt}")))

  with pytest.raises(FileNotFoundError, match="does not exist"):
    image_folder.scan(str(tmp_path / "nowhere"))


# --------------------------------------------------------- cross-validation --


def test_assign_folds_is_stratified_balanced_and_deterministic():
  labels = np.repeat([0, 1, 2], [23, 11, 7])
  fold_of = pipeline.assign_folds(labels, 5)
  np.testing.assert_array_equal(fold_of, pipeline.assign_folds(labels, 5))
  assert not np.array_equal(fold_of, pipeline.assign_folds(labels, 5, seed=1))
  sizes = np.bincount(fold_of, minlength=5)
  assert sizes.sum() == len(labels) and sizes.max() - sizes.min() <= 1
  for c in range(3):  # every class split as evenly as its count allows
    per_fold = np.bincount(fold_of[labels == c], minlength=5)
    assert per_fold.max() - per_fold.min() <= 1, (c, per_fold)
  multi = np.random.default_rng(0).integers(0, 2, (12, 4))
  assert sorted(np.bincount(pipeline.assign_folds(multi, 3))) == [4, 4, 4]
  for folds in (1, 42):
    with pytest.raises(ValueError, match=f"into {folds} folds"):
      pipeline.assign_folds(labels, folds)


def _raw_rows(config, split, image_size=28):
  """Every real example of ``split`` as (label, image bytes) rows, via the eval iterator."""
  batches = pipeline.eval_iterator(config, split, batch_size=16, image_size=image_size,
                                   mean=0.0, std=1.0)
  rows = []
  for b in batches:
    for image, label, real in zip(b["image"], b["label"], b["mask"]):
      if real:
        rows.append((int(label), np.round(image * 255).astype(np.uint8).tobytes()))
  return rows


def test_folds_pool_train_and_val_and_hold_out_each_example_once(tmp_path, monkeypatch):
  path = tmp_path / "retinamnist.npz"
  _write_synthetic_npz(path, 5, multi_label=False, rgb=True, sizes=(40, 20, 9))
  _trust_md5(monkeypatch, "retinamnist", str(path))
  plain = ml_collections.ConfigDict(dict(
      name="retinamnist", data_dir=str(tmp_path), download=False,
      cache_dir=str(tmp_path / "tfds"), augment=False))
  pooled = sorted(_raw_rows(plain, "train") + _raw_rows(plain, "val"))
  test = _raw_rows(plain, "test")
  held_out = []
  for fold in range(3):
    config = ml_collections.ConfigDict({**plain.to_dict(), "folds": 3, "fold": fold})
    info = pipeline.get_dataset_info(config)
    assert info.num_examples["train"] + info.num_examples["val"] == 60
    assert info.num_examples["val"] == 20 and info.num_examples["test"] == 9
    val = _raw_rows(config, "val")
    held_out += val
    assert _raw_rows(config, "test") == test  # the test split is never pooled
    # One training epoch (a batch of the whole split, no augmentation) is the rest.
    n = info.num_examples["train"]
    batch = next(pipeline.train_iterator(config, batch_size=n, image_size=28, mean=0.0,
                                         std=1.0, seed=0))
    train = [(int(l), np.round(x * 255).astype(np.uint8).tobytes())
             for x, l in zip(batch["image"], batch["label"])]
    assert sorted(train + val) == pooled
    np.testing.assert_array_equal(np.sort(pipeline.train_labels(config)),
                                  sorted(l for l, _ in train))
  assert sorted(held_out) == pooled  # every labelled example is validation once


def test_folds_work_on_image_folders(tmp_path):
  root = str(tmp_path / "xray")
  _make_split_folder(root)
  config = ml_collections.ConfigDict(dict(name=f"folder:{root}", folds=2, fold=1))
  info = pipeline.get_dataset_info(config)
  assert info.num_examples == {"train": 6, "val": 6, "test": 4}
  val_labels = _real(_eval_all(config, "val", image_size=16), "label")
  np.testing.assert_array_equal(np.sort(val_labels), [0, 0, 0, 1, 1, 1])  # stratified
  np.testing.assert_array_equal(np.sort(pipeline.train_labels(config)), [0, 0, 0, 1, 1, 1])
  with pytest.raises(ValueError, match="data.fold=2 is not a fold of data.folds=2"):
    pipeline.get_dataset_info(ml_collections.ConfigDict(dict(name=f"folder:{root}", folds=2,
                                                             fold=2)))
