"""jaxbn.tf_setup: TensorFlow imported without its C++ start-up lines, fd 2 restored."""

import os
import subprocess
import sys

import pytest

from jaxbn import tf_setup


def _run(code: str, **env):
  base = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        env={**base, **env}, timeout=300)


def test_import_tensorflow_writes_nothing_to_the_console_and_leaves_stderr_working():
  proc = _run("import os, sys\n"
              "from jaxbn.tf_setup import import_tensorflow\n"
              "tf = import_tensorflow()\n"
              "assert import_tensorflow() is tf is sys.modules['tensorflow']\n"
              "print('after', file=sys.stderr, flush=True)\n"
              "os.write(2, b'fd2\\n')\n"
              "print(os.environ['TF_CPP_MIN_LOG_LEVEL'])\n")
  assert proc.returncode == 0, proc.stderr
  assert proc.stderr.splitlines() == ["after", "fd2"]
  assert proc.stdout.strip() == "1"  # TensorFlow's INFO lines off by default


def test_a_log_level_the_user_set_is_kept_and_level_0_shows_the_start_up_lines(tmp_path):
  # A stand-in TensorFlow whose import writes to fd 2, as the real one's C++ start-up does.
  (tmp_path / "tensorflow").mkdir()
  (tmp_path / "tensorflow" / "__init__.py").write_text(
      "import os\nos.write(2, b'start-up line\\n')\n")
  code = ("import os\nfrom jaxbn.tf_setup import import_tensorflow\nimport_tensorflow()\n"
          "print(os.environ['TF_CPP_MIN_LOG_LEVEL'])\n")
  path = os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])
  for level, stdout, stderr in ((None, "1", ""), ("2", "2", ""), ("0", "0", "start-up line\n")):
    proc = _run(code, PYTHONPATH=path, **({"TF_CPP_MIN_LOG_LEVEL": level} if level else {}))
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout.strip(), proc.stderr) == (stdout, stderr), level


def test_a_failing_import_raises_and_restores_the_console(monkeypatch, capfd):
  monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` raises ImportError
  with pytest.raises(ImportError):
    tf_setup.import_tensorflow()
  os.write(2, b"still here\n")
  assert capfd.readouterr().err == "still here\n"
