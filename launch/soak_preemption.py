r"""Soak test of preemption/resume: kill a run at random moments, rerun it, compare test AUC.

  nice -n 10 python launch/soak_preemption.py --out=/tmp/soak --kills=10 --terms=10 \
      --workers=4 -- --config=configs/bn_only.py --config.warmup.epochs=0.05 ...

Runs ``python -m jaxbn.main ARGS --workdir=OUT/straight`` once uninterrupted
(its wall time T), then for each trial a fresh workdir: start the same
command, send SIGKILL (or SIGTERM) after a uniform random delay in (0, T),
wait for it to end (``--workers`` trials at a time), rerun the command to completion, and compare the rerun's
``results.json`` with the uninterrupted one. Writes ``OUT/soak.json`` (every
trial: signal, delay, exit status of the interrupted run, whether it had
checkpointed, rerun status, test AUC) and prints a summary.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import signal
import subprocess
import sys
import time


def run(args, workdir, log):
  with open(log, "w") as f:
    return subprocess.Popen([sys.executable, "-m", "jaxbn.main", *args, f"--workdir={workdir}"],
                            stdout=f, stderr=subprocess.STDOUT)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--out", required=True)
  p.add_argument("--kills", type=int, default=10)
  p.add_argument("--terms", type=int, default=10)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workers", type=int, default=1, help="trials run side by side")
  p.add_argument("args", nargs="*")
  a = p.parse_args()
  os.makedirs(a.out, exist_ok=True)
  rng = random.Random(a.seed)
  t0 = time.time()
  straight = os.path.join(a.out, "straight")
  proc = run(a.args, straight, straight + ".log")
  assert proc.wait() == 0, "the uninterrupted run failed"
  wall = time.time() - t0
  ref = json.load(open(os.path.join(straight, "results.json")))
  sigs = [signal.SIGKILL] * a.kills + [signal.SIGTERM] * a.terms
  rng.shuffle(sigs)
  delays = [rng.uniform(0, wall) for _ in sigs]

  def trial(i):
    sig, delay, wd = sigs[i], delays[i], os.path.join(a.out, f"trial{i:02d}")
    proc = run(a.args, wd, wd + ".interrupted.log")
    try:
      proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
      proc.send_signal(sig)
      proc.wait()
    status = proc.returncode
    ckpt_dir = os.path.join(wd, "checkpoints")
    ckpts = sorted(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else []
    had_results = os.path.exists(os.path.join(wd, "results.json"))
    rerun = run(a.args, wd, wd + ".rerun.log").wait()
    res = json.load(open(os.path.join(wd, "results.json"))) if rerun == 0 else {}
    out = dict(trial=i, signal=signal.Signals(sig).name, delay_s=round(delay, 2),
               interrupted_status=status, checkpoints_after_interrupt=ckpts,
               results_before_rerun=had_results, rerun_status=rerun,
               test_auc=res.get("test_auc"), same_test_auc=res.get("test_auc") == ref["test_auc"],
               same_val_aucs=[h["val_auc"] for h in res.get("history", [])] ==
               [h["val_auc"] for h in ref["history"]])
    print(json.dumps(out), flush=True)
    return out

  with concurrent.futures.ThreadPoolExecutor(a.workers) as pool:
    trials = list(pool.map(trial, range(len(sigs))))
  json.dump({"args": a.args, "uninterrupted_wall_s": round(wall, 1),
             "uninterrupted_test_auc": ref["test_auc"], "workers": a.workers,
             "trials": trials}, open(os.path.join(a.out, "soak.json"), "w"), indent=2)
  for name in ("SIGKILL", "SIGTERM"):
    t = [x for x in trials if x["signal"] == name]
    print(f"{name}: {sum(x['same_test_auc'] for x in t)}/{len(t)} reruns end with the "
          f"uninterrupted test AUC {ref['test_auc']}")


if __name__ == "__main__":
  main()
