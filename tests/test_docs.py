"""The documentation works: its commands run, its links resolve, the README stays short.

Every shell command in a fenced ``bash`` block of README.md, CHANGELOG.md and
docs/**/*.md is either in ``RUN_IN_CI`` (run here, rewritten to tiny settings:
2 steps of a small random-init CNN at 32 px) or in ``LONG_RUNNING`` with the
reason it is not run. A command in neither list, or a list entry that no page
holds any more, fails ``test_every_command_is_run_or_listed``, which prints the
missing entries ready to paste. Every relative link and image must resolve.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
README_MAX_LINES = 200
# Pages a link may point to before they are written (skipped while they do not exist).
PENDING_PAGES: set[str] = set()

# Run by test_readme_commands_run, in this order, after the rewrites of _tiny().
RUN_IN_CI = (
    "python -m jaxbn.main --config=configs/bn_only.py --workdir=/tmp/bn_only",
    "cat /tmp/bn_only/results.json",
    "python -m jaxbn.predict --workdir=/tmp/bn_only --image /path/to/xray.png",
    "python -m jaxbn.main --config=configs/bn_only.py --workdir=runs/my_images "
    "--config.data.name=folder:/path/to/my_images",
    "python -m jaxbn.predict --workdir=runs/my_images --image /path/to/new_image.png",
    "python -c \"import json; r = json.load(open('runs/my_images/results.json')); "
    "print(r['test_auc'], r['test_acc'])\"",
)

_TRAINS = "trains for minutes or more (the measured runs are linked from the page)"
_MEDMNIST = "needs a MedMNIST file that is not shipped (downloaded, or --config.data.data_dir)"
_TORCHVISION = "downloads a torchvision ImageNet checkpoint"
LONG_RUNNING = {
    # Installing (network; .ci/run does the README's install in a fresh clone).
    "git clone <repository-url> jaxbn && cd jaxbn": "the clone CI itself starts from",
    'python -m pip install -e ".[test]"': "network install; .ci/run runs it in a fresh venv",
    "python -m pytest -q -n 2 tests": "the whole test suite (.ci/run runs it)",
    # README / data.md.
    "python -m jaxbn.main --config=configs/bn_only.py --workdir=/tmp/bn_only_r18 "
    "--config.model.arch=resnet18 --config.data.image_size=128 --config.finetune.lr=3e-4":
        _TORCHVISION,
    # accuracy.md.
    "python -m jaxbn.sweep --train_config=configs/bn_only.py:tta=hflip+shift --seeds=3 "
    "--datasets=pneumoniamnist,retinamnist --workdir=/tmp/acc/final": _TRAINS,
    "python -m jaxbn.report /tmp/acc/final --out=/tmp/acc/final/report": "needs the sweep's runs",
    "python -m jaxbn.sweep --config=configs/sweeps/accuracy.py --workdir=/tmp/levers": _TRAINS,
    "python -m jaxbn.report /tmp/levers": "needs the sweep's runs",
    # data.md: a 5-fold cross-validation.
    "python -m jaxbn.sweep --train_config=configs/bn_only.py:eval_test=False --seeds=0, "
    "--folds=5 --datasets=retinamnist --workdir=runs/cv": _TRAINS,
    "python -m jaxbn.report runs/cv --out=runs/cv/report": "needs the sweep's runs",
    # distributed.md (tests/test_launch.py runs the launch scripts against stand-in tools).
    "python launch/tpu_vm.py all --name jaxbn-v4 --zone us-central2-b --accelerator-type v4-8 "
    "--version tpu-ubuntu2204-base --config configs/bn_only.py -- --config.model.arch=resnet50 "
    "--config.model.dtype=bfloat16": "creates a Cloud TPU VM",
    "python launch/tpu_vm.py all --name jaxbn-pod --zone us-central2-b --accelerator-type v4-32 "
    "--version tpu-ubuntu2204-base --config configs/full.py --workdir gs://MY_BUCKET/runs/full":
        "creates a Cloud TPU pod slice",
    "python launch/tpu_vm.py run --dry-run --name jaxbn-v4 --zone us-central2-b "
    "--config configs/full.py": "needs gcloud (tests/test_launch.py checks the dry run)",
    "sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 launch/slurm_gpu.sbatch --config "
    "configs/full.py --workdir /shared/runs/full -- --config.model.dtype=bfloat16":
        "needs a SLURM GPU cluster",
    "srun --kill-on-bad-exit=1 --gpu-bind=none python -m jaxbn.main --config=configs/full.py "
    "--workdir=/shared/runs/full --config.model.dtype=bfloat16": "needs a SLURM GPU cluster",
    "srun python -m jaxbn.main --config=configs/full.py --workdir=/shared/runs/full || status=$?":
        "needs a SLURM GPU cluster",
    '[ "${status:-0}" = 75 ] && scontrol requeue "$SLURM_JOB_ID"': "needs a SLURM GPU cluster",
    # docs/accuracy/final_64px/report.md: jaxbn.report's command to (re)run one run of that sweep.
    **{"python -m jaxbn.sweep --train_config=configs/bn_only.py:tta=hflip+shift --name=bn_only "
       "--seeds=0,1,2 --datasets=pneumoniamnist,retinamnist --workdir=/tmp/acc/final "
       f"--only={run}": _TRAINS for run in (
           "pneumoniamnist__efficientnet_lite0__bn_only__seed1",
           "pneumoniamnist__efficientnet_lite0__bn_only__seed2",
           "retinamnist__efficientnet_lite0__bn_only__seed0")},
    # distributed.md: the preemption soak (20 interrupted default runs).
    "python launch/soak_preemption.py --out=/tmp/soak2 --kills=10 --terms=10 --workers=2 "
    "--seed=1 -- --config=configs/bn_only.py": _TRAINS,
    # docs/accuracy/final/report.md: the final sweeps of the current recipe (3 seeds each).
    "python -m jaxbn.sweep --train_config=configs/bn_only.py:tta=hflip+shift --name=bn_only "
    "--seeds=0,1,2 --datasets=pneumoniamnist,retinamnist --workdir=/tmp/acc/final2": _TRAINS,
    "python -m jaxbn.sweep --train_config=configs/bn_only.py:tta=hflip+shift,"
    "finetune.strategy=full,finetune.lr=1e-4 --name=full --seeds=0,1,2 --datasets=retinamnist "
    "--workdir=/tmp/acc/final2": _TRAINS,
    # docs/accuracy/final_truncated/report.md: the final sweeps of the cut recipe (round four).
    "python -m jaxbn.sweep --train_config=configs/bn_only.py:tta=hflip+shift --name=bn_only "
    "--seeds=0,1,2 --datasets=pneumoniamnist,retinamnist --workdir=/tmp/acc/final4": _TRAINS,
    "python -m jaxbn.sweep --train_config=configs/bn_only.py:tta=hflip+shift,"
    "finetune.strategy=full,finetune.lr=1e-4 --name=full --seeds=0,1,2 --datasets=retinamnist "
    "--workdir=/tmp/acc/final4": _TRAINS,
    # docs/accuracy/final_round9/report.md: the final sweeps of round nine's recipe.
    **{f"python -m jaxbn.sweep --name=bn_only --seeds={seeds} --datasets={data} "
       "--workdir=/tmp/acc/final7 --train_config=configs/bn_only.py:tta=hflip+shift,"
       "finetune.lr=1e-3,data.rotate_deg=10.0,data.shift=0.0625,finetune.epochs=16": _TRAINS
       for seeds, data in (("1,2", "pneumoniamnist"), ("0,1,2", "retinamnist"),
                           ("0,", "pneumoniamnist"))},
    "python -m jaxbn.sweep --train_config=configs/bn_only.py:tta=hflip+shift,"
    "finetune.strategy=full,finetune.lr=1e-4 --name=full --seeds=0,1,2 --datasets=retinamnist "
    "--workdir=/tmp/acc/final7": _TRAINS,
    # docs/accuracy/final_round25/report.md: round twenty-five's final sweeps (not adopted).
    **{f"python -m jaxbn.sweep --name={name} --seeds=0,1,2 --datasets={data} "
       "--workdir=/tmp/acc/final25 --train_config=configs/bn_only.py:tta=hflip+shift,"
       f"finetune.lr=3e-3,finetune.warmup_steps=50{extra}": _TRAINS
       for name, data, extra in (("bn_only", "pneumoniamnist", ""), ("bn_only", "retinamnist", ""),
                                 ("full", "retinamnist",
                                  ",finetune.strategy=full,finetune.lr=1e-4"))},
    # docs/accuracy/final_early_stop/report.md: the RetinaMNIST rows again, with early stopping.
    "python -m jaxbn.sweep --train_config=configs/bn_only.py:tta=hflip+shift --name=bn_only "
    "--seeds=0,1,2 --datasets=retinamnist --workdir=/tmp/acc/final3 --prune_checkpoints": _TRAINS,
    "python -m jaxbn.sweep --train_config=configs/bn_only.py:tta=hflip+shift,"
    "finetune.strategy=full,finetune.lr=1e-4 --name=full --seeds=0,1,2 --datasets=retinamnist "
    "--workdir=/tmp/acc/final3 --prune_checkpoints": _TRAINS,
    # docs/accuracy/round2/report.md: the round-two sweep (validation only).
    "python -m jaxbn.sweep --config=configs/sweeps/accuracy.py:round2 --workdir=/tmp/acc/round2 "
    "--prune_checkpoints": _TRAINS,
    # docs/accuracy/final_64px/report.md: the RetinaMNIST sweeps (3 seeds each).
    "python -m jaxbn.sweep --train_config=configs/bn_only.py:tta=hflip+shift --name=bn_only "
    "--seeds=0,1,2 --datasets=retinamnist --workdir=/tmp/acc/final": _TRAINS,
    "python -m jaxbn.sweep --train_config=configs/bn_only.py:tta=hflip+shift,"
    "finetune.strategy=full,finetune.lr=1e-4 --name=full --seeds=0,1,2 --datasets=retinamnist "
    "--workdir=/tmp/acc/final": _TRAINS,
    # benchmarks.md.
    "python -m jaxbn.bench --archs=resnet50,efficientnet_lite0 --strategies=full,bn+head "
    "--batch_size=16 --image_size=112 --reps=5 --peers=torch "
    "--out=docs/benchmarks/peers_idle.json": "compiles and times ResNet-50 (minutes)",
    "python -m jaxbn.bench --archs=resnet50,efficientnet_lite0 --strategies=full,bn+head "
    "--batch_size=256 --image_size=224 --dtype=bfloat16 --peers=torch --reps=20 "
    "--out=docs/benchmarks/peers_h200.json": "needs a GPU (batch 256 at 224 px)",
    # partial_transfusion.md, docs/results.
    "python -m jaxbn.sweep --config=configs/sweeps/partial_transfusion.py --workdir=/tmp/pt":
        _TRAINS,
    "python -m jaxbn.report /tmp/pt --out=/tmp/pt/report": "needs the sweep's runs",
    "python -m jaxbn.sweep --config=configs/sweeps/partial_transfusion.py:paper "
    "--workdir=/tmp/pt_paper": "days of accelerator time",
    "python -m jaxbn.sweep --config=configs/sweeps/partial_transfusion.py "
    "--workdir=/tmp/jaxbn_partial_transfusion --prune_checkpoints": _TRAINS,
    "python -m jaxbn.sweep --config=configs/sweeps/partial_transfusion.py "
    "--workdir=/tmp/jaxbn_partial_transfusion --prune_checkpoints "
    "--only=fc_then_full,fc_then_bn,fc,bn_and_fc,fc_then_bn_bma,fc_bma,bn_and_fc_bma,rnd_bn_and_fc":
        _TRAINS,
    # acnorm.md, docs/acnorm.
    "python -m jaxbn.main --config=configs/acnorm.py --workdir=/tmp/acnorm": _TRAINS,
    "python -m jaxbn.main --config=configs/acnorm.py --workdir=/tmp/acnorm_retina "
    "--config.data.name=retinamnist --config.data.data_dir=/path/to/medmnist": _MEDMNIST,
    "python -m jaxbn.sweep --config=configs/sweeps/acnorm.py --workdir=/tmp/acn": _TRAINS,
    "python -m jaxbn.report /tmp/acn --out=/tmp/acn/report": "needs the sweep's runs",
    "python -m jaxbn.sweep --config=configs/sweeps/acnorm.py "
    "--workdir=/tmp/jaxbn_acnorm_runs/acn": _TRAINS,
    "python -m jaxbn.bench --archs=resnet50 --strategies=full,bn+head --norms=bn,acnorm "
    "--bn_stats=batch --batch_size=16 --image_size=112 --reps=8":
        "times ResNet-50 steps for minutes",
    "python -m jaxbn.main --config=configs/transferability.py --workdir=/tmp/acc "
    "--config.data.name=retinamnist --config.transfer.validate=True": _MEDMNIST,
    # transfusion.md.
    "python -m jaxbn.main --config=configs/transfusion_random.py --workdir=/tmp/tf/random":
        _TRAINS,
    "python -m jaxbn.main --config=configs/transfusion_mean_var.py --workdir=/tmp/tf/mean_var":
        _TRAINS,
    "python -m jaxbn.main --config=configs/transfusion_transfer.py:model.transfer_up_to=conv1 "
    "--workdir=/tmp/tf/transfer_conv1": _TRAINS,
    "python -m jaxbn.main --config=configs/transfusion_transfer.py --workdir=/tmp/tf/transfer":
        _TRAINS,
    "python -m jaxbn.analysis.convergence /tmp/tf/random /tmp/tf/mean_var "
    "/tmp/tf/transfer_conv1 /tmp/tf/transfer --labels "
    "random,mean_var,transfer_up_to=conv1,transfer_up_to=all --target 0.95 --out /tmp/tf":
        "needs the four training runs above",
    "python -m jaxbn.analysis.similarity --arch efficientnet_lite0 --a imagenet "
    "--b /tmp/tf/transfer --label_a ImageNet --label_b \"fine-tuned (transfer_up_to=all)\" "
    "--data pneumoniamnist --image_size 48 --num_images 500 --threads 1 "
    "--out /tmp/cca_imagenet_vs_finetuned": "needs a training run; minutes of CCA",
    "python -m jaxbn.analysis.similarity --arch efficientnet_lite0 --a imagenet "
    "--b /tmp/tf/random --label_a ImageNet --label_b \"trained from random init\" "
    "--data pneumoniamnist --image_size 48 --num_images 500 --threads 1 "
    "--out /tmp/cca_imagenet_vs_random_init_trained": "needs a training run; minutes of CCA",
    "python -m jaxbn.analysis.filters --arch efficientnet_lite0 --a imagenet "
    "--b /tmp/tf/transfer --label_a \"ImageNet (before)\" "
    "--label_b \"fine-tuned, transfer_up_to=all (after)\" --diff "
    "--out /tmp/filters_lite0_imagenet_vs_finetuned.png": "needs a training run",
    "python -m jaxbn.analysis.filters --arch efficientnet_lite0 --a /tmp/tf/random "
    "--b /tmp/tf/transfer --label_a \"trained from random init\" "
    "--label_b \"ImageNet init, fine-tuned\" "
    "--out /tmp/filters_lite0_random_vs_imagenet_trained.png": "needs two training runs",
    # truncated.md.
    "python -m jaxbn.main --config=configs/truncated.py --workdir=/tmp/ttl_stage5": _TRAINS,
    "python -m jaxbn.main --config=configs/truncated.py:model.arch=resnet50,"
    "model.truncate_at=layer3_3 --workdir=/tmp/ttl_r50": _TORCHVISION,
    "python -m jaxbn.main --config=configs/bn_only.py --config.model.truncate_at=stage5 "
    "--workdir=/tmp/ttl_bn": _TRAINS,
    "python -m jaxbn.main --config=configs/truncated_search.py --workdir=/tmp/ttl_search":
        "trains 13 cuts",
    # models.md.
    "python -m jaxbn.convert --arch efficientnet_lite0 --num_classes 2 --out /tmp/lite0_2class":
        "converts a real checkpoint (tests/test_weights.py covers jaxbn.convert)",
    "python -m jaxbn.convert --arch resnet50 --src /path/to/resnet50-0676ba61.pth "
    "--out /tmp/r50": "needs the torchvision ResNet-50 file",
    "python -m jaxbn.predict --arch efficientnet_lite0 --image /path/to/photo.jpg --top 5":
        "needs a photo of yours (tests/test_efficientnet_lite.py classifies sample photos)",
}

_FENCE = re.compile(r"^```(\w*)\s*$")
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def doc_files() -> list[pathlib.Path]:
  files = [REPO / "README.md", REPO / "CHANGELOG.md"]
  files += sorted((REPO / "docs").rglob("*.md"))
  return [f for f in files if f.exists()]


def _strip_comment(line: str) -> str:
  """Drops a trailing ``# comment`` that is outside quotes."""
  quote = None
  for i, ch in enumerate(line):
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch == "#" and (i == 0 or line[i - 1].isspace()):
      return line[:i]
  return line


def bash_commands(text: str) -> list[str]:
  """Commands of the fenced bash blocks: continuations joined, comments dropped, spaces collapsed."""
  commands, in_bash, pending = [], False, ""
  for line in text.splitlines():
    fence = _FENCE.match(line.strip())
    if fence:
      in_bash = not in_bash and fence.group(1) in ("bash", "sh", "shell")
      pending = ""
      continue
    if not in_bash:
      continue
    line = _strip_comment(line).rstrip()
    if line.endswith("\\"):
      pending += line[:-1] + " "
      continue
    command = " ".join((pending + line).split())
    pending = ""
    if command:
      commands.append(command)
  return commands


def all_commands() -> dict[str, list[str]]:
  """command -> the files (relative paths) that hold it."""
  out: dict[str, list[str]] = {}
  for path in doc_files():
    for command in bash_commands(path.read_text(encoding="utf-8")):
      out.setdefault(command, []).append(str(path.relative_to(REPO)))
  return out


def test_bash_commands_parser():
  text = ("```bash\n# a comment\npython -m x --a=1 \\\n    --b \"c # d\"   # note\n\n"
          "ls\n```\n```python\nignored()\n```\n")
  assert bash_commands(text) == ['python -m x --a=1 --b "c # d"', "ls"]


def test_every_command_is_run_or_listed():
  found = all_commands()
  listed = set(RUN_IN_CI) | set(LONG_RUNNING)
  assert not set(RUN_IN_CI) & set(LONG_RUNNING)
  unlisted = {c: files for c, files in found.items() if c not in listed}
  stale = sorted(listed - set(found))
  message = ""
  if unlisted:
    message += ("Commands in the docs that CI neither runs nor lists as long-running; add each "
                "to RUN_IN_CI (and run it) or to LONG_RUNNING with a reason:\n")
    message += "".join(f"    {c!r}: \"...\",  # {', '.join(f)}\n" for c, f in unlisted.items())
  if stale:
    message += "Entries that no page holds any more (remove them):\n"
    message += "".join(f"    {c!r}\n" for c in stale)
  assert not message, message


def _write_images(root: pathlib.Path, per_class: int = 12) -> None:
  """Two classes of small grayscale PNGs: a bright square vs horizontal stripes."""
  rng = np.random.default_rng(0)
  for name in ("square", "stripes"):
    (root / name).mkdir(parents=True)
    for i in range(per_class):
      image = rng.normal(90, 20, (20, 24))
      if name == "square":
        y, x = rng.integers(2, 10, 2)
        image[y:y + 8, x:x + 8] += 120
      else:
        image[::4] += 80
      Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "L").save(
          root / name / f"{name}_{i:02d}.png")


# Tiny settings for every training command: a 2-step run of a small random-init CNN.
TINY = ("--config.max_steps=2 --config.data.image_size=32 --config.model.arch=cbr_small "
        "--config.model.init=random --config.eval_max_batches=1 --config.eval_batch_size=64")


def _tiny(command: str, tmp: pathlib.Path) -> str:
  images = tmp / "my_images"
  command = (command.replace("/tmp/", f"{tmp}/")
             .replace("/path/to/my_images", str(images))
             .replace("/path/to/new_image.png", str(images / "square" / "square_00.png"))
             .replace("/path/to/xray.png", str(images / "stripes" / "stripes_00.png")))
  if command.startswith("python -m jaxbn.main "):
    command += " " + TINY
  return command


@pytest.mark.slow
def test_readme_commands_run(tmp_path):
  """The README's quick start and "your own data" commands, on tiny settings, in order."""
  found = all_commands()
  assert set(RUN_IN_CI) <= set(found)
  _write_images(tmp_path / "my_images")
  env = dict(os.environ, PYTHONPATH=str(REPO), JAXBN_OFFLINE="1", TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("XLA_FLAGS", None)
  outputs = {}
  for command in RUN_IN_CI:
    command = _tiny(command, tmp_path)
    # Relative workdirs (runs/...) land in tmp_path; configs/ is read from the repository.
    command = command.replace("--config=configs/", f"--config={REPO}/configs/")
    done = subprocess.run(["bash", "-c", command.replace("python ", f"{sys.executable} ", 1)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    outputs[command] = done.stdout
  for workdir in (tmp_path / "bn_only", tmp_path / "runs" / "my_images"):
    results = json.loads((workdir / "results.json").read_text())
    assert results["total_steps"] == 2 and 0.0 <= results["test_auc"] <= 1.0
    assert (workdir / "best").is_dir() and list(workdir.glob("events.out.tfevents.*"))
  own = json.loads((tmp_path / "runs" / "my_images" / "results.json").read_text())
  assert own["class_names"] == ["square", "stripes"] and own["dataset"].startswith("folder:")
  predicted = [json.loads(out) for cmd, out in outputs.items() if "jaxbn.predict" in cmd]
  assert [p["top"][0]["name"] in ("square", "stripes") for p in predicted[1:]] == [True]
  assert {t["name"] for t in predicted[0]["top"]} == {"normal", "pneumonia"}


def _links(path: pathlib.Path) -> list[str]:
  text = path.read_text(encoding="utf-8")
  text = re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold no links
  return [m.group(1) for m in _LINK.finditer(text)]


def test_relative_links_and_images_resolve():
  broken, pending = [], []
  for path in doc_files():
    for target in _links(path):
      if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
        continue  # https:, mailto:, in-page anchors
      resolved = (path.parent / target.split("#")[0]).resolve()
      if resolved.exists():
        continue
      relative = os.path.relpath(resolved, REPO)
      (pending if relative in PENDING_PAGES else broken).append(
          f"{path.relative_to(REPO)}: {target}")
  assert not broken, "broken links:\n" + "\n".join(broken)
  if pending:
    print("links to pages not merged yet:", *pending, sep="\n  ")


def test_readme_is_short_and_keeps_the_ci_commands():
  lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
  assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"
  install = [l for l in lines if l.startswith("python -m pip install ")]
  tests = [l for l in lines if l.startswith("python -m pytest ")]
  assert install[0] == 'python -m pip install -e ".[test]"'  # what .ci/run greps
  assert tests[0] == "python -m pytest -q -n 2 tests"


# Wording about how the docs were written, not about the software; split so this file passes.
_BANNED = [p.replace("|", "") for p in (
    "in this| session", "other| engineers", "cannot be| downloaded here", "this| project's",
    "No GPU was| available", "../sha|red")]


def test_no_wording_about_the_writing_of_the_docs():
  hits = []
  for path in REPO.rglob("*"):
    if (".git" in path.parts or not path.is_file() or path.name == "test_docs.py"
        or path.suffix not in (".md", ".py", ".sh", ".sbatch", ".toml", ".cfg", ".txt")):
      continue
    text = path.read_text(encoding="utf-8", errors="ignore")
    for phrase in _BANNED:
      if phrase.lower() in text.lower():
        hits.append(f"{path.relative_to(REPO)}: {phrase!r}")
  assert not hits, "\n".join(hits)


def python_blocks(text: str) -> list[str]:
  """The fenced ``python`` blocks of a Markdown text, in order."""
  blocks, current = [], None
  for line in text.splitlines():
    fence = _FENCE.match(line.strip())
    if fence:
      if current is None and fence.group(1) == "python":
        current = []
      elif current is not None:
        blocks.append("\n".join(current))
        current = None
      continue
    if current is not None:
      current.append(line)
  return blocks


def test_readme_masks_recipes_run_verbatim():
  """The README's Linen and NNX recipes, as written, on one small batch of "your" images:
  only BN γ,β and the head move, and NNX computes gradients for exactly those leaves."""
  import jax

  linen, nnx_recipe = python_blocks((REPO / "README.md").read_text(encoding="utf-8"))
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 32, 32, 3)).astype(np.float32)
  targets = np.array([0, 1])
  ns: dict = {}
  exec(compile(linen, "README.md (Linen)", "exec"), ns)  # noqa: S102
  params, opt_state = ns["params"], ns["opt_state"]
  for step in range(2):  # the new head starts at zero: step 1 moves only the head
    params, opt_state, loss = ns["train_step"](params, opt_state, images, targets,
                                               jax.random.key(step))
    assert np.isfinite(float(loss))
  moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                       ns["params"], params)
  assert jax.tree.leaves(moved) == [l == "trainable" for l in jax.tree.leaves(ns["labels"])]

  ns.update(images=images, targets=targets)
  exec(compile(nnx_recipe, "README.md (NNX)", "exec"), ns)  # noqa: S102
  from flax import nnx

  grads, selected = nnx.to_flat_state(ns["grads"]), nnx.to_flat_state(
      nnx.state(ns["net"], ns["f"]))
  assert [p for p, _ in grads] == [p for p, _ in selected]
  assert 0 < sum(v.size for _, v in grads) < 0.02 * sum(
      v.size for _, v in nnx.to_flat_state(nnx.state(ns["net"], nnx.Param)))
