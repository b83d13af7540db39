"""launch/: the exact commands of --dry-run, early failures, and runs against fake tools.

No test runs a real gcloud/srun: the "missing tool" tests run with a PATH that
holds nothing but a python, the others put recording stubs first on PATH.
"""

import json
import os
import pathlib
import shlex
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU = str(REPO / "launch" / "tpu_vm.py")
SLURM = str(REPO / "launch" / "slurm_gpu.sbatch")
LOCAL = str(REPO / "launch" / "gpu_local.sh")
BASH = "/bin/bash"


def run(cmd, cwd, path=None, env=None):
  env = dict(os.environ, **(env or {}))
  if path is not None:
    env["PATH"] = path
  return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)


def lines(out: str) -> list[str]:
  return out.strip().splitlines()


@pytest.fixture
def bare_path(tmp_path) -> str:
  """A PATH with python only (no gcloud, srun, nvidia-smi, git)."""
  d = tmp_path / "bare_bin"
  d.mkdir()
  (d / "python3").symlink_to(sys.executable)
  return str(d)


@pytest.fixture
def stubs(tmp_path):
  """Makes recording stubs ``name`` on a PATH in front of the real one.

  Each call appends its argv (and CUDA_VISIBLE_DEVICES) as a JSON line to
  ``calls.jsonl``; ``FAIL_IF`` (a substring of the joined argv) makes it exit 3.
  """
  d = tmp_path / "stub_bin"
  d.mkdir()
  log = tmp_path / "calls.jsonl"

  def make(*names):
    for name in names:
      stub = d / name
      stub.write_text(
          f"#!{sys.executable}\n"
          "import json, os, sys\n"
          f"call = [os.path.basename(sys.argv[0]), *sys.argv[1:]]\n"
          f"with open({str(log)!r}, 'a') as f:\n"
          "  f.write(json.dumps({'argv': call, 'cuda': os.environ.get('CUDA_VISIBLE_DEVICES')})"
          " + '\\n')\n"
          "print('stub output of', call[1] if len(call) > 1 else call[0], flush=True)\n"
          "fail = os.environ.get('FAIL_IF')\n"
          "sys.exit(3 if fail and fail in ' '.join(call) else 0)\n")
      stub.chmod(0o755)
    return f"{d}:{os.environ['PATH']}"

  make.calls = lambda: [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
  return make


# --------------------------------------------------------------------------- #
# TPU VM
# --------------------------------------------------------------------------- #

TPU_ARGS = ["--name", "jaxbn-v4", "--zone", "us-central2-b"]
CREATE_ARGS = ["--accelerator-type", "v4-8", "--version", "tpu-ubuntu2204-base"]


def tpu_expected(dest: str) -> dict[str, list[str]]:
  z = "--zone=us-central2-b"
  install = (
      "mkdir -p ~/jaxbn && tar -xzf ~/jaxbn-src.tar.gz -C ~/jaxbn && "
      "python3 -m pip install --quiet --user uv && "
      "~/.local/bin/uv venv --quiet --seed --allow-existing --python 3.11 ~/jaxbn-venv && "
      "cd ~/jaxbn && ~/jaxbn-venv/bin/python -m pip install --quiet --extra-index-url "
      'https://download.pytorch.org/whl/cpu "jax[tpu]<0.11" ".[torch,weights]"')
  run_ = ("cd ~/jaxbn && TF_CPP_MIN_LOG_LEVEL=2 ~/jaxbn-venv/bin/python -m jaxbn.main "
          "--config=configs/full.py --workdir=runs/jaxbn-v4 --distributed "
          "--config.model.arch=resnet50 '--config.data.name=folder:/my data'")
  return {
      "create": [
          f"gcloud compute tpus tpu-vm create jaxbn-v4 {z} --accelerator-type=v4-8 "
          "--version=tpu-ubuntu2204-base"],
      "install": [
          f"mkdir -p {dest}",
          f"git -C {REPO} archive --format=tar.gz --output={dest}/jaxbn-src.tar.gz HEAD",
          f"gcloud compute tpus tpu-vm scp {dest}/jaxbn-src.tar.gz jaxbn-v4:jaxbn-src.tar.gz {z} "
          "--worker=all",
          f"gcloud compute tpus tpu-vm ssh jaxbn-v4 {z} --worker=all " + shlex.quote(
              f"--command={install}")],
      "run": [
          f"mkdir -p {dest}",
          f"gcloud compute tpus tpu-vm ssh jaxbn-v4 {z} --worker=all " + shlex.quote(
              f"--command={run_}")],
      "copy": [
          f"mkdir -p {dest}",
          "gcloud compute tpus tpu-vm scp jaxbn-v4:jaxbn/runs/jaxbn-v4/results.json "
          f"'jaxbn-v4:jaxbn/runs/jaxbn-v4/events.out.tfevents.*' {dest}/ {z} --worker=0"],
      "delete": [f"gcloud compute tpus tpu-vm delete jaxbn-v4 {z} --quiet"],
  }


MAIN_ARGS = ["--", "--config.model.arch=resnet50", "--config.data.name=folder:/my data"]


def test_tpu_all_dry_run_exact_commands(tmp_path):
  out = run([sys.executable, TPU, "all", "--dry-run", *TPU_ARGS, *CREATE_ARGS,
             "--config", "configs/full.py", *MAIN_ARGS], cwd=tmp_path)
  assert out.returncode == 0, out.stderr
  exp = tpu_expected(str(tmp_path / "runs" / "jaxbn-v4"))
  assert lines(out.stdout) == [c for step in ("create", "install", "run", "copy", "delete")
                               for c in exp[step]]


@pytest.mark.parametrize("step", ["create", "install", "run", "copy", "delete"])
def test_tpu_single_step_dry_run(tmp_path, step):
  extra = {"create": CREATE_ARGS, "run": ["--config", "configs/full.py", *MAIN_ARGS]}
  out = run([sys.executable, TPU, step, "--dry-run", *TPU_ARGS, *extra.get(step, [])],
            cwd=tmp_path)
  assert out.returncode == 0, out.stderr
  assert lines(out.stdout) == tpu_expected(str(tmp_path / "runs" / "jaxbn-v4"))[step]


def test_tpu_gcs_workdir_project_spot_and_dest(tmp_path):
  common = ["--name", "pod", "--zone", "europe-west4-b", "--project", "my-proj",
            "--dest", "out", "--dry-run"]
  out = run([sys.executable, TPU, "all", *common, "--accelerator-type", "v5litepod-32",
             "--version", "v2-alpha-tpuv5-lite", "--spot", "--workdir", "gs://bkt/run1",
             "--extras", "", "--keep"], cwd=tmp_path)
  assert out.returncode == 0, out.stderr
  got = lines(out.stdout)
  z, p, dest = "--zone=europe-west4-b", "--project=my-proj", tmp_path / "out"
  assert got[0] == (f"gcloud compute tpus tpu-vm create pod {z} {p} "
                    "--accelerator-type=v5litepod-32 --version=v2-alpha-tpuv5-lite --spot")
  assert got[4].endswith('"jax[tpu]<0.11" "."\'')
  assert "--workdir=gs://bkt/run1 --distributed'" in got[6]
  assert got[-1] == (f"gcloud storage cp gs://bkt/run1/results.json "
                     f"'gs://bkt/run1/events.out.tfevents.*' {dest}/ {p}")
  assert not any("delete" in c for c in got)  # --keep


def test_tpu_pod_slice_needs_a_shared_workdir(tmp_path):
  out = run([sys.executable, TPU, "all", "--dry-run", *TPU_ARGS, "--accelerator-type", "v4-32",
             "--version", "tpu-ubuntu2204-base"], cwd=tmp_path)
  assert out.returncode == 1 and out.stdout == ""
  assert "pass --workdir gs://BUCKET/PATH" in out.stderr


def test_tpu_fails_early_without_gcloud(tmp_path, bare_path):
  out = run(["python3", TPU, "all", *TPU_ARGS, *CREATE_ARGS], cwd=tmp_path, path=bare_path)
  assert out.returncode == 2 and out.stdout == ""
  assert "gcloud not found on PATH" in out.stderr and "--dry-run" in out.stderr
  # ... and --dry-run does not need it.
  out = run(["python3", TPU, "delete", "--dry-run", *TPU_ARGS], cwd=tmp_path, path=bare_path)
  assert out.returncode == 0 and "tpu-vm delete" in out.stdout


def test_tpu_help_and_usage_errors(tmp_path):
  out = run([sys.executable, TPU, "--help"], cwd=tmp_path)
  assert out.returncode == 0 and "create" in out.stdout and "--worker=all" in out.stdout
  out = run([sys.executable, TPU, "all", "--help"], cwd=tmp_path)
  assert out.returncode == 0 and "--accelerator-type" in out.stdout and "--keep" in out.stdout
  out = run([sys.executable, TPU, "create", "--dry-run", *TPU_ARGS], cwd=tmp_path)
  assert out.returncode == 2 and "--accelerator-type" in out.stderr
  out = run([sys.executable, TPU, "delete", "--dry-run", *TPU_ARGS, "--", "--x=1"], cwd=tmp_path)
  assert out.returncode == 2 and "for the run step" in out.stderr


def _gcloud_lines(text: str) -> list[str]:
  return [c for c in lines(text) if c.startswith("gcloud")]


def test_tpu_all_runs_the_printed_commands_streams_logs(tmp_path, stubs):
  path = stubs("gcloud")
  args = [sys.executable, TPU, "all", *TPU_ARGS, *CREATE_ARGS, "--config", "configs/full.py",
          *MAIN_ARGS]
  dry = run(args[:3] + ["--dry-run"] + args[3:], cwd=tmp_path, path=path)
  out = run(args, cwd=tmp_path, path=path)
  assert out.returncode == 0, out.stderr
  assert [shlex.join(c["argv"]) for c in stubs.calls()] == _gcloud_lines(dry.stdout)
  dest = tmp_path / "runs" / "jaxbn-v4"
  assert (dest / "jaxbn-src.tar.gz").stat().st_size > 0  # git archive really ran
  assert "stub output of compute" in (dest / "run.log").read_text()  # the run step's output
  assert "stub output of compute" in out.stdout


def test_tpu_all_deletes_the_vm_when_the_run_fails(tmp_path, stubs):
  path = stubs("gcloud")
  out = run([sys.executable, TPU, "all", *TPU_ARGS, *CREATE_ARGS], cwd=tmp_path, path=path,
            env={"FAIL_IF": "jaxbn.main"})
  assert out.returncode == 1 and "command failed (exit 3)" in out.stderr
  steps = [c["argv"][4] for c in stubs.calls()]
  assert steps == ["create", "scp", "ssh", "ssh", "delete"]  # no copy, but deleted


def test_tpu_all_does_not_delete_a_vm_it_did_not_create(tmp_path, stubs):
  path = stubs("gcloud")
  out = run([sys.executable, TPU, "all", *TPU_ARGS, *CREATE_ARGS], cwd=tmp_path, path=path,
            env={"FAIL_IF": "tpu-vm create"})
  assert out.returncode == 1
  assert [c["argv"][4] for c in stubs.calls()] == ["create"]


# --------------------------------------------------------------------------- #
# SLURM (multi-node GPU)
# --------------------------------------------------------------------------- #

SLURM_CMD = ("srun --kill-on-bad-exit=1 --gpu-bind=none python -m jaxbn.main "
             "--config=configs/full.py '--workdir=/shared/my runs' --config.model.arch=resnet50 "
             "--config.model.dtype=bfloat16")
SLURM_ARGS = ["--config", "configs/full.py", "--workdir", "/shared/my runs", "--",
              "--config.model.arch=resnet50", "--config.model.dtype=bfloat16"]


def test_slurm_dry_run_exact_command(tmp_path, bare_path):
  out = run([BASH, SLURM, "--dry-run", *SLURM_ARGS], cwd=tmp_path, path=bare_path)
  assert out.returncode == 0, out.stderr
  assert out.stdout == SLURM_CMD + "\n"
  out = run([BASH, SLURM, "--dry-run", "--python=/opt/venv/bin/python", "--config=c.py",
             "--workdir=/w"], cwd=tmp_path)
  assert out.stdout == ("srun --kill-on-bad-exit=1 --gpu-bind=none /opt/venv/bin/python -m "
                        "jaxbn.main --config=c.py --workdir=/w\n")


def test_slurm_template_defaults_one_task_per_gpu():
  text = pathlib.Path(SLURM).read_text()
  assert "#SBATCH --ntasks-per-node=8" in text and "#SBATCH --gpus-per-node=8" in text


def test_slurm_fails_early(tmp_path, bare_path, stubs):
  out = run([BASH, SLURM, *SLURM_ARGS], cwd=tmp_path, path=bare_path)
  assert out.returncode == 2 and "srun not found on PATH" in out.stderr and out.stdout == ""
  path = stubs("srun")
  env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
  out = subprocess.run([BASH, SLURM, *SLURM_ARGS], cwd=tmp_path, env=dict(env, PATH=path),
                       capture_output=True, text=True)
  assert out.returncode == 2 and "not inside a SLURM allocation" in out.stderr
  assert stubs.calls() == []
  out = run([BASH, SLURM, "--workdir", "/w"], cwd=tmp_path)
  assert out.returncode == 2 and "--config and --workdir are required" in out.stderr
  out = run([BASH, SLURM, "--help"], cwd=tmp_path)
  assert out.returncode == 0 and out.stdout.startswith("usage: sbatch")


def test_slurm_runs_srun_inside_a_job(tmp_path, stubs):
  path = stubs("srun")
  out = run([BASH, SLURM, *SLURM_ARGS], cwd=tmp_path, path=path,
            env={"SLURM_JOB_ID": "42", "SLURM_NNODES": "2", "SLURM_NTASKS": "16"})
  assert out.returncode == 0, out.stderr
  assert [shlex.join(c["argv"]) for c in stubs.calls()] == [SLURM_CMD]
  assert "job 42, 2 nodes, 16 tasks" in out.stderr


# --------------------------------------------------------------------------- #
# One host, several GPUs
# --------------------------------------------------------------------------- #


def test_gpu_local_dry_run_exact_command(tmp_path, bare_path):
  out = run([BASH, LOCAL, "--dry-run", "--gpus", "0,1,2,3", "--config", "configs/full.py",
             "--workdir", "/tmp/full", "--", "--config.batch_size=128"], cwd=tmp_path,
            path=bare_path)
  assert out.returncode == 0, out.stderr
  assert out.stdout == ("env CUDA_VISIBLE_DEVICES=0,1,2,3 python -m jaxbn.main "
                        "--config=configs/full.py --workdir=/tmp/full --config.batch_size=128\n")
  out = run([BASH, LOCAL, "--dry-run", "--config=configs/bn_only.py", "--workdir=/tmp/bn"],
            cwd=tmp_path)
  assert out.stdout == "python -m jaxbn.main --config=configs/bn_only.py --workdir=/tmp/bn\n"


def test_gpu_local_fails_early_and_runs(tmp_path, bare_path, stubs):
  args = ["--gpus", "0,1", "--config", "configs/full.py", "--workdir", "/tmp/full"]
  out = run([BASH, LOCAL, *args], cwd=tmp_path, path=bare_path)
  assert out.returncode == 2 and "nvidia-smi not found" in out.stderr
  out = run([BASH, LOCAL, "--bogus"], cwd=tmp_path)
  assert out.returncode == 2 and "unknown argument '--bogus'" in out.stderr
  path = stubs("nvidia-smi", "fakepython")
  out = run([BASH, LOCAL, *args, "--python", "fakepython", "--", "--config.seed=1"], cwd=tmp_path,
            path=path)
  assert out.returncode == 0, out.stderr
  calls = stubs.calls()
  assert calls[0]["argv"][:2] == ["fakepython", "-c"]  # the "does JAX see a GPU" check
  assert calls[-1] == {"argv": ["fakepython", "-m", "jaxbn.main", "--config=configs/full.py",
                                "--workdir=/tmp/full", "--config.seed=1"], "cuda": "0,1"}
