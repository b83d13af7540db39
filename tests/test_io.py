"""jaxbn.io and jaxbn.plotting: atomic writes, permissions, nothing half-written."""

import json
import os

import numpy as np
import pytest

from jaxbn import io, plotting


def _umask():
  mask = os.umask(0)
  os.umask(mask)
  return mask


def test_text_and_json_are_written_whole_with_normal_permissions(tmp_path):
  path = tmp_path / "sub" / "results.json"
  io.write_json_atomic(path, {"b": 1, "a": [1.5, None]})
  assert json.loads(path.read_text()) == {"a": [1.5, None], "b": 1}
  assert path.read_text().startswith('{\n  "a"')  # sorted, indented
  assert (path.stat().st_mode & 0o777) == (0o666 & ~_umask())  # not mkstemp's 0o600
  io.write_text_atomic(path, "replaced\n")
  assert path.read_text() == "replaced\n"
  assert os.listdir(path.parent) == ["results.json"]  # no temporary file left


def test_unserialisable_json_leaves_the_old_file(tmp_path):
  path = tmp_path / "results.json"
  io.write_json_atomic(path, {"ok": 1})
  with pytest.raises(TypeError):
    io.write_json_atomic(path, {"bad": object()})
  assert json.loads(path.read_text()) == {"ok": 1}
  io.write_json_atomic(path, {"x": np.float32(1.0)}, default=float, sort_keys=False)
  assert json.loads(path.read_text()) == {"x": 1.0}
  assert os.listdir(tmp_path) == ["results.json"]


def test_save_figure_writes_a_png_and_closes_it(tmp_path):
  plt = plotting.pyplot()
  fig, ax = plt.subplots()
  ax.plot([0, 1], [1, 0])
  plotting.save_figure(fig, tmp_path / "curve.png")
  assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert not plt.fignum_exists(fig.number)
  assert os.listdir(tmp_path) == ["curve.png"]
