"""Mutation testing of one module group with mutmut 3 and its fast tests only.

    pip install mutmut==3.8.1
    nice -n 10 python tools/mutation.py metrics            # or masks, step, ops, cca, converters
    nice -n 10 python tools/mutation.py masks --rerun-survivors   # after adding tests
    nice -n 10 python tools/mutation.py converters --sample 250   # a random sample of mutants

Copies the git-tracked tree (plus untracked, not ignored files) into a scratch
directory (``--workdir``, default ``<tmp>/jaxbn-mutation/<group>``), writes a
``setup.cfg`` ``[mutmut]`` section naming the group's files and fast tests, runs
``mutmut run`` there (mutmut forks one child per mutant and runs only the tests
that reach the mutated function, stopping at the first failure), and prints the
score: killed / all mutants, listing the others (survived, timeout, not checked). A later run in the same
workdir reuses mutmut's results; ``--rerun-survivors`` first refreshes the tests
from the repository and reruns only the mutants that were not killed (survived,
timed out, or not checked because a run was interrupted). ``--sample N`` checks N
mutants drawn at random (``--seed``) from the group's and reports the killed share
of the sample with its 95 % (Wilson) interval: for a group too large to check in
full on a small machine; the sample is kept in the workdir, so ``--rerun-survivors``
stays within it.
"""

from __future__ import annotations

import argparse
import ast
import concurrent.futures
import fnmatch
import json
import math
import os
import pathlib
import re
import shutil
import random
import subprocess
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]

# group -> (files to mutate, fast test selection).
GROUPS = {
    "metrics": (["jaxbn/metrics.py"], ["tests/test_metrics.py"]),
    "masks": (
        ["jaxbn/masks.py"],
        [
            "tests/test_masks.py",
            "tests/test_doctests.py::test_doctests[jaxbn.masks]",
            # the NNX filter, selector algebra and label alignment (no training loops)
            "tests/test_nnx.py::test_filter_selects_exactly",
            "tests/test_nnx.py::test_filter_is_hashable_and_combines_with_nnx_filters",
            "tests/test_nnx.py::test_bn_is_found_structurally_not_by_name",
            "tests/test_nnx.py::test_user_predicates_and_selector_algebra",
            "tests/test_nnx.py::test_head_detection_and_naming",
            "tests/test_nnx.py::test_missing_affine_says_norms_were_found",
            "tests/test_nnx.py::test_nnx_labels_forward_stats_arch_and_is_norm",
            "tests/test_nnx.py::test_nnx_filter_names",
            "tests/test_nnx.py::test_labels_realigned_on_an_nnx_state_hold_plain_strings",
            "tests/test_nnx.py::test_selector_algebra_on_linen_params",
            "tests/test_nnx.py::test_missing_affine_error_for_linen_too",
            "tests/test_nnx.py::test_readme_recipe_with_nnx_label_trees",
            "tests/test_nnx.py::test_nnx_labels_helper_and_summary",
            "tests/test_nnx.py::test_labels_for_other_parameters_error",
            "tests/test_nnx.py::test_selective_transform_equivalence",
            "tests/test_nnx.py::test_docstring_examples_run",
        ],
    ),
    "step": (["jaxbn/step.py"], ["tests/test_step.py", "tests/test_doctests.py::test_doctests[jaxbn.step]"]),
    "ops": (
        ["jaxbn/ops/acnorm.py"],
        [
            "tests/test_acnorm.py::test_op_matches_numpy_spec_random",
            "tests/test_acnorm.py::test_op_hand_computed_target_moved_towards_another_source_channel",
            "tests/test_acnorm.py::test_op_hand_computed_ties_negative_gamma_and_temperature",
            "tests/test_acnorm.py::test_op_bfloat16_inputs_computed_in_float32",
            "tests/test_acnorm.py::test_op_outputs_float32_even_with_x64_enabled",
            "tests/test_acnorm.py::test_op_recalibration_product_asks_for_full_precision",
            "tests/test_acnorm.py::test_op_rejects_anything_but_four_vectors_of_one_shape",
            "tests/test_acnorm.py::test_gradient_is_identity_plus_s_transposed_and_s_has_none",
        ],
    ),
    "cca": (["jaxbn/analysis/cca.py"], ["tests/test_cca.py"]),
    "converters": (
        # convert.py is only the old name of pytorch.py (sys.modules alias).
        ["jaxbn/weights/pytorch.py", "jaxbn/weights/torchvision.py",
         "jaxbn/weights/efficientnet_lite.py", "jaxbn/weights/keys.py"],
        [
            "tests/test_weights.py",
            "tests/test_models_torchvision.py::test_converted_tree_matches_init_shapes",
            "tests/test_models_torchvision.py::test_key_table_examples",
            "tests/test_models_torchvision.py::test_normalise_legacy_key",
            "tests/test_models_torchvision.py::test_normalise_legacy_key_is_identity_on_modern_keys",
            "tests/test_models_torchvision.py::test_legacy_densenet_keys_convert",
            "tests/test_models_torchvision.py::test_resnet50_checkpoint_as_resnet18_is_refused",
            "tests/test_models_torchvision.py::test_resnet18_checkpoint_as_resnet50_lists_missing_keys",
            "tests/test_models_torchvision.py::test_eval_logits_match_torch[resnet18-64]",
            "tests/test_efficientnet_lite.py::test_key_table_covers_checkpoint",
            "tests/test_efficientnet_lite.py::test_converted_tree_equals_init_shapes",
            "tests/test_efficientnet_lite.py::test_eval_logits_match_torch[efficientnet_lite0-64]",
            "tests/test_truncated.py::test_resnet50_prefix_equals_the_checkpoint",
            "tests/test_truncated.py::test_prefix_conversion_stays_strict",
            "tests/test_truncated.py::test_densenet_and_efficientnet_prefixes_equal_the_checkpoint",
            "tests/test_truncated.py::test_converted_directory_is_cut_too",
            "tests/test_acnorm.py::test_pretrained_bn_checkpoint_initialises_source_and_target_alike",
        ],
    ),
}


# Only a failing test counts; a timeout (a mutant that loops, or a loaded machine) is
# listed with the survivors.
DETECTED = ("killed", "killed (fresh process)")


def _tree_files() -> list[str]:
  out = subprocess.run(
      ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
      cwd=REPO, check=True, capture_output=True,
  ).stdout.decode()
  return [f for f in out.split("\0") if f and (REPO / f).is_file()]


def _copy_tree(dest: pathlib.Path, only: str | None = None) -> None:
  for f in _tree_files():
    if only and not f.startswith(only):
      continue
    target = dest / f
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / f, target)


def _undecorate(path: pathlib.Path) -> int:
  """Rewrites ``@d\\ndef f(...): ...`` at module level into ``def f`` + ``f = d(f)``.

  mutmut 3 does not mutate decorated functions (it cannot know what a decorator does
  with the function). ``@jax.jit`` on a module-level function is applied the same way
  by an assignment after the definition, so the scratch copy spells it that way and
  the body is mutated; the repository's source is not changed. Returns how many
  functions were rewritten.
  """
  source = path.read_text()
  lines = source.splitlines(keepends=True)
  edits = []
  for node in ast.parse(source).body:
    if isinstance(node, ast.FunctionDef) and node.decorator_list:
      decorators = [ast.get_source_segment(source, d) for d in node.decorator_list]
      first = min(d.lineno for d in node.decorator_list) - 1  # the first "@" line
      edits.append((first, node.lineno - 1, node.end_lineno, node.name, decorators))
  for first, def_line, end, name, decorators in reversed(edits):
    wrapped = name
    for decorator in reversed(decorators):
      wrapped = f"({decorator})({wrapped})"
    lines[end:end] = [f"{name} = {wrapped}\n"]
    del lines[first:def_line]
  path.write_text("".join(lines))
  return len(edits)


def _config(files: list[str], tests: list[str]) -> str:
  lines = ["[mutmut]", "source_paths = jaxbn", "only_mutate ="]
  lines += [f"    {f}" for f in files]
  lines += ["pytest_add_cli_args_test_selection ="] + [f"    {t}" for t in tests]
  lines += ["pytest_add_cli_args =", "    -p no:cacheprovider"]
  # A fork server that has imported third-party modules only (no XLA backend yet): a
  # child forked after XLA's thread pools start can deadlock. Each child then imports
  # jaxbn and starts XLA itself, which the per-test times mutmut measured do not include:
  # the wall-clock limit is 5 x (test time + 60 s).
  lines += ["process_isolation = forkserver", "forkserver_warmup = import",
            "preload_modules_file = tools/mutation_preload.txt", "timeout_multiplier = 5.0",
            "timeout_constant = 60.0", ""]
  return "\n".join(lines)


def _mutmut(workdir: pathlib.Path, *args: str, capture: bool = False):
  return subprocess.run(
      [sys.executable, "-m", "mutmut", *args], cwd=workdir, check=not capture,
      capture_output=capture, text=True, env={**os.environ, "PYTHONPATH": ""},
  )


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("group", choices=sorted(GROUPS))
  parser.add_argument("--workdir", type=pathlib.Path)
  parser.add_argument("--max-children", type=int, default=2)
  parser.add_argument("--rerun-survivors", action="store_true")
  parser.add_argument("--only", nargs="*", default=[], metavar="GLOB",
                      help="mutant name globs to run, e.g. 'jaxbn.step.x_loss_per_example*'")
  parser.add_argument(
      "--fresh-process", metavar="GLOB", nargs="*", default=[],
      help="recheck the survivors matching any GLOB (e.g. '*x__norm_selector*') each in a fresh "
           "pytest process with the mutant on from the start: for code that runs at import "
           "time (module-level tables), which mutmut's forked workers import unmutated.")
  parser.add_argument("--sample", type=int, default=0, metavar="N",
                      help="check N mutants drawn at random instead of all of them")
  parser.add_argument("--seed", type=int, default=0, help="the seed of --sample's draw")
  args = parser.parse_args(argv)
  files, tests = GROUPS[args.group]
  workdir = args.workdir or pathlib.Path(tempfile.gettempdir()) / "jaxbn-mutation" / args.group

  if (args.rerun_survivors or args.fresh_process) and not (workdir / "mutants").is_dir():
    print(f"error: no earlier run in {workdir}; run without --rerun-survivors/--fresh-process "
          "first.", file=sys.stderr)
    return 2
  if args.fresh_process:
    pass  # Only rechecks the existing results below.
  elif args.rerun_survivors:
    _copy_tree(workdir, only="tests/")
    _copy_tree(workdir / "mutants", only="tests/")
    names = _survivors(workdir)
    if names:
      _mutmut(workdir, "run", "--max-children", str(args.max_children), *names)
  else:
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    _copy_tree(workdir)
    for f in files:
      _undecorate(workdir / f)
    (workdir / "setup.cfg").write_text(_config(files, tests))
    names = list(args.only)
    if args.sample:
      names = _draw_sample(workdir, args.sample, args.seed)
    _mutmut(workdir, "run", "--max-children", str(args.max_children), *names)

  results = _results(workdir)
  sample_file = workdir / SAMPLE_FILE
  fresh_file = workdir / "fresh_process_results.json"
  fresh = json.loads(fresh_file.read_text()) if fresh_file.exists() else {}
  if args.fresh_process:
    _copy_tree(workdir / "mutants", only="tests/")
    names = [n for n, status in sorted(results.items()) if status not in DETECTED
             and any(fnmatch.fnmatch(n, glob) for glob in args.fresh_process)]

    def check(name: str) -> tuple[str, str]:
      proc = subprocess.run(
          [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
          cwd=workdir / "mutants", capture_output=True, text=True,
          env={**os.environ, "PYTHONPATH": "", "MUTANT_UNDER_TEST": name},
      )
      # Exit 2 with a collection error: the mutant breaks importing the module (the
      # unmutated tree collects cleanly), which the tests detect as surely as a failure.
      collection = proc.returncode == 2 and "during collection" in proc.stdout
      status = ("killed" if proc.returncode == 1 or collection else
                "survived" if proc.returncode == 0 else f"error {proc.returncode}")
      return name, status

    with concurrent.futures.ThreadPoolExecutor(args.max_children) as pool:
      for name, status in pool.map(check, names):
        fresh[name] = status
        print(f"  fresh process: {status:9s} {name}", flush=True)
    fresh_file.write_text(json.dumps(fresh, indent=1))
  for name, status in fresh.items():
    if results.get(name) not in DETECTED and status == "killed":
      results[name] = "killed (fresh process)"
  total = len(results)
  killed = sum(status in DETECTED for status in results.values())
  print(f"\n{args.group}: {killed}/{total} killed = {100 * killed / max(total, 1):.1f} %")
  if sample_file.exists():
    low, high = _wilson(killed, total)
    print(f"  a random sample of the group's mutants; 95 % interval {100 * low:.1f}-"
          f"{100 * high:.1f} %")
  for name, status in sorted(results.items()):
    if status not in DETECTED:
      print(f"  {status:10s} {name}")
  return 0


SAMPLE_FILE = "sample.json"


def _draw_sample(workdir: pathlib.Path, n: int, seed: int) -> list[str]:
  """Generates the mutants, draws ``n`` and saves the draw.

  A run filtered on a name no mutant has writes every mutant and stops (mutmut
  then fails on the empty filter, which is expected) before checking any.
  """
  _mutmut(workdir, "run", "--max-children", "1", "no-mutant-has-this-name", capture=True)
  everything = sorted(_results(workdir))
  chosen = sorted(random.Random(seed).sample(everything, min(n, len(everything))))
  (workdir / SAMPLE_FILE).write_text(json.dumps(chosen, indent=1))
  print(f"checking {len(chosen)} of {len(everything)} mutants (seed {seed})", flush=True)
  return chosen


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
  """The Wilson score interval of a proportion ``k / n``."""
  if n == 0:
    return 0.0, 1.0
  p = k / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return centre - half, centre + half


def _results(workdir: pathlib.Path) -> dict[str, str]:
  """Mutant name → mutmut's status, within the ``--sample`` draw when there is one."""
  out = _mutmut(workdir, "results", "--all", "true", capture=True).stdout
  results = dict(re.findall(r"^\s*(\S+__mutmut_\d+): (\S.*?)\s*$", out, re.M))
  if (workdir / SAMPLE_FILE).exists():
    sample = set(json.loads((workdir / SAMPLE_FILE).read_text()))
    results = {n: s for n, s in results.items() if n in sample}
  return results


def _survivors(workdir: pathlib.Path) -> list[str]:
  # "not checked": an interrupted run; rerunning them resumes it.
  return [n for n, s in _results(workdir).items()
          if s in ("survived", "timeout", "not checked")]


if __name__ == "__main__":
  sys.exit(main())
