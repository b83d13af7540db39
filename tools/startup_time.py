"""Seconds from `python -m jaxbn.main` start to its first train step, cold vs warm cache.

Runs the default config capped at one step (``--config.max_steps=1``, one eval batch),
alternating a cold run (empty compilation cache) and a warm run (the cache a previous
identical command filled), and reports, per run, the seconds from the command's start
to the log line of step 1 (the first train step and its first, one-batch evaluation)
and to the end, and where the time went: the seconds at which the imports were done
(JAX's device line), the model, weights and data were ready (the ``Model ...`` line) and
the first train step's loss was written. The cache can only shorten what comes after the
second mark (compilation), so ``warm / cold`` has a floor set by the time before it and by
tracing and running the steps. Before the first pair the data set is prepared once (on a
fresh machine TFDS builds PneumoniaMNIST's records on the first run, which would otherwise
count as compilation in the first cold run). Usage::

    python tools/startup_time.py --pairs=3 --out=docs/benchmarks/startup_idle.json
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


# Log lines marking the phases of a run (the first line containing each).
MARKS = {
    "imports_s": " devices (",            # jaxbn.main: JAX's process/device line
    "ready_s": "] Model ",                # jaxbn.train: model, weights and data built
    "first_train_step_s": "first train step done",  # jaxbn.train: step 1 ran
    "first_step_s": "step 1 [",           # step 1 and its first evaluation
}


# Builds (first time: prepares) the default config's data set, outside the timed runs.
PREPARE = ("from jaxbn.config import load_config_file; from jaxbn import data; "
           "data.get_dataset_info(load_config_file('configs/bn_only.py').data)")


def environment() -> dict:
  """The device and versions the figures hold for (called after the runs: on a GPU, a JAX
  client in this process would take the memory the timed commands need)."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  env = {"device": jax.devices()[0].device_kind, "platform": jax.devices()[0].platform,
         "cpus": os.cpu_count(), "python": sys.version.split()[0]}
  for name in ("jax", "jaxlib", "flax", "tensorflow-cpu"):
    try:
      env[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return env


def one_run(cache_dir: str, workdir: str) -> dict:
  cmd = [sys.executable, "-m", "jaxbn.main", "--config=configs/bn_only.py", f"--workdir={workdir}",
         "--config.max_steps=1", "--config.eval_every_steps=1", "--config.eval_max_batches=1",
         f"--compilation_cache_dir={cache_dir}"]
  t0 = time.perf_counter()
  proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
  seen, last_lines = {}, collections.deque(maxlen=20)
  for line in proc.stderr:
    last_lines.append(line)
    for key, marker in MARKS.items():
      if key not in seen and marker in line:
        seen[key] = round(time.perf_counter() - t0, 2)
  proc.wait()
  if proc.returncode != 0 or "first_step_s" not in seen:
    sys.stderr.writelines(last_lines)
    raise SystemExit(f"error: the run failed (exit {proc.returncode}); its last log lines are "
                     "above")
  return {**seen, "done_s": round(time.perf_counter() - t0, 2)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pairs", type=int, default=3)
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  subprocess.run([sys.executable, "-c", PREPARE], check=True, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
  runs = {"cold": [], "warm": []}
  with tempfile.TemporaryDirectory() as tmp:
    for i in range(args.pairs):
      cache = os.path.join(tmp, f"cache{i}")
      for kind in ("cold", "warm"):  # the warm run reuses the cold run's cache
        runs[kind].append(one_run(cache, os.path.join(tmp, f"{kind}{i}")))
        print(kind, runs[kind][-1], flush=True)
  summary = {k: statistics.median(r["first_step_s"] for r in v) for k, v in runs.items()}
  summary["warm_over_cold"] = round(summary["warm"] / summary["cold"], 3)
  phases = {kind: {key: round(statistics.median(r[key] for r in v if key in r), 2)
                   for key in [*MARKS, "done_s"] if any(key in r for r in v)}
            for kind, v in runs.items()}
  env = environment()
  print(json.dumps(env))
  print(json.dumps(summary))
  print(json.dumps({"median_phases_s": phases}))
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"environment": env, "runs": runs, "median_first_step_s": summary,
                 "median_phases_s": phases}, f, indent=1)


if __name__ == "__main__":
  main()
