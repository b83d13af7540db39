"""Config validation up front: every config mistake is one ``error:`` line, exit status 2.

Two layers, both run by :mod:`jaxbn.main` before any model, data or workdir
is touched:

* :func:`parse_flags` wraps absl's flag parsing. ml_collections reports an
  unknown key of ``--config.model.archh=x`` as an ``AttributeError``, one of
  ``--config=configs/x.py:model.archh=x`` as a traceback inside an absl
  ``IllegalFlagValueError``, a missing config file as an ``OSError``, and a
  value of the wrong type (``--config.batch_size=1.5``) as an absl error;
  each becomes one line naming the key and what is allowed.
* :func:`check` checks the values of a parsed config (types, ranges, names of
  architectures, strategies, schedules, ...) and :func:`check_devices` the
  batch sizes against the device count. Each raises :class:`ConfigError`
  whose message names the field and what is allowed.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import sys
from typing import Any, Callable, Iterable, Sequence

import ml_collections

from jaxbn.config import load_config_file
from jaxbn.data.fields import RESIZE_METHODS
from jaxbn.models.layers import POOLS
from jaxbn.models.registry import DTYPES

USAGE_EXIT = 2  # status of every config error (as absl's usage errors)
SCHEDULES = ("constant", "cosine", "plateau")
OPTIMIZERS = ("adam", "adamw", "sgd")
IMAGE_SIZE_RANGE = (8, 2048)


class ConfigError(ValueError):
  """A config value that cannot run; the message names the field and what is allowed."""


def fail(message: str) -> None:
  """Prints ``error: message`` (one line) to stderr and exits with status 2."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(USAGE_EXIT)


# --------------------------------------------------------------------------- #
# Flag parsing.
# --------------------------------------------------------------------------- #


def parse_flags(argv: Sequence[str]) -> list[str]:
  """``absl.app.run``'s ``flags_parser``: absl + ml_collections parsing, one-line errors."""
  from absl import flags

  try:
    rest = flags.FLAGS(list(argv))
    if "config" in flags.FLAGS:
      _ = "task" in flags.FLAGS.config  # a config file that failed to load raises when read
    return rest
  except Exception as e:  # pylint: disable=broad-except
    fail(flag_error_message(e, argv))
  raise AssertionError("unreachable")


def _config_arg(argv: Sequence[str]) -> str | None:
  value = None
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      value = a[len("--config="):]
    elif a == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _override_of(argv: Sequence[str], key: str) -> str:
  for a in argv:
    if a.startswith(f"--config.{key}=") or a == f"--config.{key}":
      return a
  return f"--config.{key}"


def unknown_key_message(config: ml_collections.ConfigDict | None, key: str, where: str) -> str:
  """``model.archh`` → which part is unknown, the closest field, the fields there."""
  node, parts = config, key.split(".")
  for depth, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict):
      parent = ".".join(parts[:depth])
      return f"unknown config key {key!r} ({where}): config.{parent} is a value, not a group."
    if part not in node:
      parent = "config" + "".join(f".{p}" for p in parts[:depth])
      fields = sorted(node.keys())
      close = difflib.get_close_matches(part, fields, n=1)
      hint = f" Did you mean {'.'.join(parts[:depth] + close[:1])!r}?" if close else ""
      return (f"unknown config key {key!r} ({where}): {parent} has no field {part!r}.{hint} "
              f"Fields of {parent}: {', '.join(fields)}.")
    node = node[part]
  return f"config key {key!r} ({where}) could not be set."


def flag_error_message(e: BaseException, argv: Sequence[str]) -> str:
  """One line for any exception of absl/ml_collections flag parsing."""
  text = str(e)
  spec = _config_arg(argv)
  # A missing / unloadable config file.
  if isinstance(e, OSError) or "Failed loading config file" in text:
    path = (spec or "").partition(":")[0]
    if path and not os.path.isfile(path):
      return (f"config file {path!r} not found (--config); give an existing file, "
              "e.g. --config=configs/bn_only.py.")
    return f"could not load config file {path!r} (--config): {_last_line(text)}"
  # --config.a.b=x with an unknown key: absl's "Unknown command line flag" or
  # ml_collections' AttributeError ("'archh'\nDid you mean ...").
  unknown = re.search(r"Unknown command line flag '([^']+)'", text)
  key = None
  if unknown and unknown.group(1).startswith("config."):
    key = unknown.group(1)[len("config."):]
  elif isinstance(e, (AttributeError, KeyError)):
    key = _unknown_override_key(argv, spec)
  if key is not None:
    return unknown_key_message(_safe_load(spec), key, _override_of(argv, key))
  if unknown:
    return f"unknown flag --{unknown.group(1)}; see --helpshort for the flags."
  # Errors inside the config file's get_config (the ':a.b=x' overrides).
  if "Error whilst parsing config file" in text:
    return f"{_last_line(text)} (in --config={spec})"
  # --config.batch_size=1.5: "flag --config.batch_size=1.5: invalid literal ..."
  bad = re.match(r"flag --config\.([\w.]+)=(.*?): (.*)", text, re.S)
  if bad:
    key, value, why = bad.groups()
    current = _current_value(_safe_load(spec), key)
    kind = type(current).__name__ if current is not None else "another type"
    return (f"config.{key}={value!r} has the wrong type ({_last_line(why)}): "
            f"config.{key} takes a {kind} value, e.g. --config.{key}={current!r}.")
  required = re.search(r"[Ff]lag --(\w+) must have a value other than None", text)
  if required:
    example = {"config": "configs/bn_only.py", "workdir": "runs/bn_only"}.get(required.group(1),
                                                                             "VALUE")
    return f"--{required.group(1)} is required, e.g. --{required.group(1)}={example}."
  return _last_line(text)


def _last_line(text: str) -> str:
  lines = [l.strip() for l in str(text).strip().splitlines() if l.strip()]
  line = lines[-1] if lines else str(text)
  # "ValueError: Unknown config key ..." → "Unknown config key ..."
  return re.sub(r"^[A-Za-z_.]*(Error|Exception): ", "", line)


def _unknown_override_key(argv: Sequence[str], spec: str | None) -> str | None:
  config = _safe_load(spec)
  if config is None:
    return None
  for a in argv:
    if a.startswith("--config.") and "=" in a:
      key = a[len("--config."):].split("=", 1)[0]
      if _current_value(config, key, missing=KeyError) is KeyError:
        return key
  return None


def _safe_load(spec: str | None) -> ml_collections.ConfigDict | None:
  if not spec:
    return None
  try:
    return load_config_file(spec)
  except Exception:  # pylint: disable=broad-except
    try:
      return load_config_file(spec.partition(":")[0])
    except Exception:  # pylint: disable=broad-except
      return None


def _current_value(config, key: str, missing: Any = None) -> Any:
  node = config
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return missing
    node = node[part]
  return node


# --------------------------------------------------------------------------- #
# Value checks.
# --------------------------------------------------------------------------- #

Check = Callable[[Any], bool]


def _is_int(v) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
  return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def int_in(lo: int, hi: float = math.inf) -> tuple[Check, str]:
  what = f"an integer >= {lo}" if hi == math.inf else f"an integer from {lo} to {hi}"
  return (lambda v: _is_int(v) and lo <= v <= hi), what


def num_in(lo: float, hi: float = math.inf, *, lo_open: bool = False,
           hi_open: bool = False) -> tuple[Check, str]:
  lo_s, hi_s = ("(" if lo_open else "["), (")" if hi_open else "]")
  what = (f"a finite number > {lo}" if lo_open else f"a finite number >= {lo}") \
      if hi == math.inf else f"a number in {lo_s}{lo}, {hi}{hi_s}"

  def ok(v):
    if not _is_num(v):
      return False
    return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)

  return ok, what


def one_of(*choices: str) -> tuple[Check, str]:
  return (lambda v: v in choices), " | ".join(choices)


def boolean(optional: bool = False) -> tuple[Check, str]:
  return ((lambda v: isinstance(v, bool) or (optional and v is None)),
          "True or False" + (" or None" if optional else ""))


def optional_str() -> tuple[Check, str]:
  return (lambda v: v is None or (isinstance(v, str) and v != "")), "a non-empty string or None"


def _data_name() -> tuple[Check, str]:
  from jaxbn.data import medmnist  # no TensorFlow import at module level there

  names = tuple(medmnist.DATASETS)

  def ok(v):
    return isinstance(v, str) and (
        v in names or (v.startswith(("tfds:", "folder:")) and len(v.split(":", 1)[1]) > 0))

  return ok, f"a MedMNIST name ({', '.join(names)}), tfds:<name> or folder:<path>"


def _arch() -> tuple[Check, str]:
  from jaxbn.models import available_models

  names = available_models()
  return (lambda v: v in names), " | ".join(names)


def _parses(parse: Callable[[str], Any]) -> Check:
  def ok(v):
    if not isinstance(v, str):
      return False
    try:
      parse(v)
    except ValueError:
      return False
    return True

  return ok


def _norm() -> tuple[Check, str]:
  from jaxbn.models import norm

  return _parses(norm.parse), " | ".join(norm.NORMS) + " | acnorm:tau=T (T > 0)"


def _init() -> tuple[Check, str]:
  # Paths are checked (one-line errors, nothing executed) where they are read.
  from jaxbn.weights import init

  return _parses(init.parse_init), ("imagenet | random[:SEED] | mean_var[:SEED] | "
                                    "mean_var:PATH | a checkpoint path")


def _stage_widths() -> tuple[Check, str]:
  def ok(v):
    return v is None or (isinstance(v, (tuple, list)) and len(v) == 4
                         and all(_is_int(w) and w > 0 for w in v))

  return ok, "None or 4 positive integers, e.g. (64, 128, 128, 256)"


def _head_taps() -> tuple[Check, str]:
  def ok(v):
    return isinstance(v, (tuple, list)) and all(isinstance(t, str) and t for t in v)

  return ok, "a tuple of cut names, e.g. ('stage-2',), or () for the last features only"


def _strategy() -> tuple[Check, str]:
  from jaxbn import masks

  def ok(v):
    if not isinstance(v, str) or not v.strip():
      return False
    try:
      masks.parse_strategy(v)
    except (ValueError, re.error):
      return False
    return True

  return ok, (f"a jaxbn.masks strategy: {', '.join(masks.STRATEGIES)}, terms combined "
              "with '+', e.g. 'bn+head'")


def _stage_fields() -> dict[str, tuple[Check, str]]:
  return {
      "strategy": _strategy(),
      "epochs": num_in(0.0),
      "lr": num_in(0.0, lo_open=True),
      "schedule": one_of(*SCHEDULES),
      "warmup_steps": int_in(0),
      "early_stopping_patience": int_in(0),
      "min_steps": int_in(0),
      "max_steps": int_in(0),
  }


def _tta_views() -> tuple[Check, str]:
  from jaxbn import tta

  def ok(v):
    try:
      return isinstance(v, str) and (tta.parse_views(v) is not None)
    except ValueError:
      return False

  return ok, f"'' (off) or views from {', '.join(tta.VIEWS)} joined by ',' or '+'"


def field_checks(tasks: Iterable[str] = ("train",)) -> dict[str, tuple[Check, str]]:
  """``dotted field → (check, what is allowed)`` for the fields of
  ``jaxbn.config.base_config``."""
  checks = {
      "task": one_of(*sorted(tasks)),
      "seed": int_in(0, 2**31 - 1),
      "model.arch": _arch(),
      "model.init": _init(),
      "model.dtype": one_of(*DTYPES),  # the dtype table of jaxbn.models.registry
      "model.norm": _norm(),
      "model.dropout_rate": num_in(0.0, 1.0, hi_open=True),
      "model.truncate_at": optional_str(),
      "model.drop_path_rate": num_in(0.0, 1.0, hi_open=True),
      "model.head_taps": _head_taps(),
      "model.pool": one_of(*POOLS),
      "model.transfer_up_to": optional_str(),
      "model.stage_widths": _stage_widths(),
      "data.name": _data_name(),
      "data.data_dir": optional_str(),
      "data.cache_dir": optional_str(),
      "data.download": boolean(),
      "data.image_size": int_in(*IMAGE_SIZE_RANGE),
      "data.augment": boolean(),
      "data.hflip": boolean(optional=True),
      "data.shuffle_buffer": int_in(1),
      "data.cache": boolean(optional=True),
      "data.rotate_deg": num_in(0.0, 180.0),
      "data.shift": num_in(0.0, 0.5),
      "data.vflip": boolean(),
      "data.brightness": num_in(0.0, 1.0),
      "data.contrast": num_in(0.0, 1.0),
      "data.resize": one_of(*RESIZE_METHODS),
      "data.folds": ((lambda v: _is_int(v) and (v == 0 or v >= 2)),
                     "0 (the data set's own val split) or an integer >= 2"),
      "data.fold": int_in(0),
      "batch_size": int_in(1),
      "eval_batch_size": int_in(1),
      "optimizer": one_of(*OPTIMIZERS),
      "weight_decay": num_in(0.0),
      "grad_clip_norm": num_in(0.0),
      "label_smoothing": num_in(0.0, 1.0, hi_open=True),
      "ordinal_scale": num_in(0.0),
      "auc_loss_weight": num_in(0.0),
      "auc_loss_margin": num_in(0.0, lo_open=True),
      "mixup_alpha": num_in(0.0),
      "class_weights": one_of("none", "balanced"),
      "bn_stats": one_of("frozen", "batch"),
      "bn_momentum": num_in(0.0, 1.0, hi_open=True),
      "bn_target_batches": int_in(0),
      "plateau_factor": num_in(0.0, 1.0, lo_open=True),
      "plateau_patience": int_in(1),
      "min_lr": num_in(0.0),
      "early_stopping_metric": one_of("val_loss", "val_auc"),
      "parallel": one_of("jit", "pmap"),
      "eval_every_steps": int_in(0),
      "log_every_steps": int_in(1),
      "checkpoint_every_evals": int_in(1),
      "keep_checkpoints": int_in(1),
      "target_auc": num_in(0.0, 1.0),
      "max_steps": int_in(0),
      "eval_max_batches": int_in(0),
      "min_evals": int_in(0),
      "ema_decay": num_in(0.0, 1.0, hi_open=True),
      "soup_size": int_in(0),
      "tta": _tta_views(),
      "tta_shift": num_in(0.0, 0.5),
      "eval_test": boolean(),
  }
  for stage in ("warmup", "finetune"):
    checks.update({f"{stage}.{k}": v for k, v in _stage_fields().items()})
  return checks


def check(config: ml_collections.ConfigDict, tasks: Iterable[str] = ("train",)) -> None:
  """Raises :class:`ConfigError` for the first invalid field (fields a config lacks are skipped)."""
  for key, (ok, allowed) in field_checks(tasks).items():
    value = _current_value(config, key, missing=KeyError)
    if value is KeyError:
      continue
    if not ok(value):
      raise ConfigError(f"config.{key}={value!r} is not allowed: use {allowed} "
                        f"(--config.{key}=...).")
  _check_cross_fields(config)


def _check_cross_fields(config: ml_collections.ConfigDict) -> None:
  stages = [s for s in ("warmup", "finetune") if s in config]
  if stages and all(config[s].epochs == 0 for s in stages):
    raise ConfigError("config.warmup.epochs and config.finetune.epochs are both 0: nothing to "
                      "train; give at least one stage epochs > 0.")
  folds, fold = _current_value(config, "data.folds"), _current_value(config, "data.fold")
  if folds and fold is not None and fold >= folds:
    raise ConfigError(f"config.data.fold={fold} is not a fold of data.folds={folds}: use "
                      f"--config.data.fold=0 .. {folds - 1}.")
  if _current_value(config, "auc_loss_weight") and _current_value(config, "mixup_alpha"):
    raise ConfigError("config.auc_loss_weight ranks each class's positives above its negatives, "
                      "and a mixed image is neither: set --config.mixup_alpha=0 or "
                      "--config.auc_loss_weight=0.")
  arch, cut = _current_value(config, "model.arch"), _current_value(config, "model.truncate_at")
  if cut is not None and arch is not None:
    from jaxbn.models import cut_points, get_cut

    try:
      cuts = cut_points(arch)
    except ValueError as e:
      raise ConfigError(f"config.model.truncate_at={cut!r}: {e}") from None
    try:
      get_cut(arch, cut)  # a cut name, or a stageK / stage-K prefix (jaxbn.models.prefix)
    except ValueError:
      raise ConfigError(f"config.model.truncate_at={cut!r} is not a cut point of {arch}: use "
                        f"None, stage-K (every stage but the last K) or one of "
                        f"{', '.join(cuts)}.") from None
  taps = _current_value(config, "model.head_taps")
  if taps and arch is not None:
    from jaxbn.models import create_model

    try:
      create_model(arch, truncate_at=cut, head_taps=tuple(taps))  # resolves and orders the taps
    except ValueError as e:
      raise ConfigError(f"config.model.head_taps={tuple(taps)!r}: {str(e).rstrip('.')}; give cuts "
                        f"that end before model.truncate_at={cut!r}, or ().") from None
  rate = _current_value(config, "model.drop_path_rate")
  if rate and arch is not None:
    from jaxbn.models import create_model

    try:
      create_model(arch, drop_path_rate=rate)  # refuses families without residual branches
    except ValueError as e:
      raise ConfigError(f"config.model.{str(e).rstrip('.')} "
                        f"(--config.model.drop_path_rate=0).") from None


def check_devices(config: ml_collections.ConfigDict, num_devices: int,
                  process_count: int = 1) -> None:
  """Batch sizes must split evenly over all devices (and so over the processes)."""
  for name in ("batch_size", "eval_batch_size"):
    if name in config and config[name] % num_devices:
      raise ConfigError(
          f"config.{name}={config[name]} is not divisible by the {num_devices} devices "
          f"({process_count} process(es)): set --config.{name} to a multiple of {num_devices}.")
