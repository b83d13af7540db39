"""The base experiment config every file in ``configs/`` starts from.

A config file is ``get_config(arg)`` returning an ``ml_collections.ConfigDict``;
``arg`` (the text after ``:`` in ``--config=configs/x.py:arg``) holds
``key=value`` overrides separated by commas, e.g.
``--config=configs/bn_only.py:model.arch=resnet50,data.name=retinamnist``.
Every field can also be overridden with ``--config.model.arch=resnet50``.

Training runs in up to two stages, ``warmup`` then ``finetune`` (a stage with
``epochs=0`` is skipped). Each stage names its trainable leaves with a
:mod:`jaxbn.masks` strategy (``head``, ``bn+head``, ``full``, ...).
"""

from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections
from ml_collections.config_dict import placeholder

from jaxbn.data import fields as data_fields


def stage(strategy: str, epochs: float, lr: float,
          schedule: str = "constant") -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
      dict(
          strategy=strategy,  # jaxbn.masks strategy for this stage
          epochs=float(epochs),  # maximum epochs (0 skips the stage)
          lr=float(lr),
          schedule=schedule,  # constant | cosine | plateau
          warmup_steps=0,  # linear lr warm-up at the start of the stage
          early_stopping_patience=0,  # evaluations without val improvement; 0 = off
          # jaxbn.budget: the stage runs clip(epochs * steps/epoch, min_steps, max_steps)
          # steps (0 = no bound), so a small data set still gets enough optimizer steps.
          min_steps=0,
          max_steps=0,
      )
  )


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # What `python -m jaxbn.main` does with this config: "train" (jaxbn.train);
  # other tasks register in jaxbn.main.TASKS.
  c.task = "train"
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.arch = "efficientnet_lite0"
  # imagenet | random | mean_var[:path] (Transfusion, jaxbn.weights.init) |
  # path to .pth/.safetensors/jaxbn checkpoint dir
  c.model.init = "imagenet"
  c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (params stay float32)
  c.model.norm = "bn"
  c.model.dropout_rate = 0.2
  # TruncatedTL: keep the backbone up to this cut (jaxbn.models.cut_points), then
  # global average pooling + a new head; None = the full network.
  c.model.truncate_at = placeholder(str)
  # A multi-scale head: cuts (names as for truncate_at, e.g. "stage-2") whose outputs the
  # head also reads, pooled and concatenated with the last features; () = the last only.
  c.model.head_taps = ()
  c.model.pool = "avg"  # the head's global pooling: avg | max | avgmax (both, concatenated)
  # Stochastic depth in training: block i of N drops its residual branch with probability
  # drop_path_rate * i / N (jaxbn.models.layers.drop_path); EfficientNet-Lite and ResNet.
  c.model.drop_path_rate = 0.0
  # Transfusion (jaxbn.weights.init): copy the pretrained weights (model.init) up to
  # this cut, random init for the rest: none | conv1 | stage1 .. stage{S-1} | all
  # (ResNet: conv1|stage1|stage2|stage3|all). None = the whole init as usual.
  c.model.transfer_up_to = placeholder(str)
  # ResNet only: widths of layer1..4's 3x3 convs, e.g. (64, 128, 128, 256) for
  # Transfusion's slim variant; None = the standard (64, 128, 256, 512).
  c.model.stage_widths = placeholder(tuple)

  # name, data_dir, image_size, augment, hflip, rotate_deg, shift, vflip, cache, ...:
  # one table with the pipeline's defaults (jaxbn.data.fields).
  c.data = data_fields.default_config()

  c.batch_size = 64  # global, split over all devices
  c.eval_batch_size = 256
  c.optimizer = "adam"  # adam | adamw | sgd
  c.weight_decay = 0.0
  c.grad_clip_norm = 0.0  # 0 = off
  c.label_smoothing = 0.0
  # Soft ordinal labels (jaxbn.step.ordinal_targets) for single-label data whose class indices
  # are ordered (e.g. grades): the target is softmax(-ordinal_scale (k - y)^2); 0 = one-hot.
  c.ordinal_scale = 0.0
  # AUC maximisation: the loss adds auc_loss_weight × the batch's squared-hinge AUC surrogate
  # over each class's positive-negative pairs of probabilities (jaxbn.step.pairwise_auc_loss,
  # margin auc_loss_margin); 0 = cross-entropy alone. Not with mixup.
  c.auc_loss_weight = 0.0
  c.auc_loss_margin = 1.0
  c.mixup_alpha = 0.0  # mixup's Beta(α, α) when > 0 (jaxbn.step.mixup); 0 = off
  # "balanced": each example's loss × N / (K n_its_class) over the training split, so every
  # class weighs the same (jaxbn.step.balanced_class_weights); single-label data only
  # (multi-label data train unweighted). "none": unweighted.
  c.class_weights = "none"

  # BN statistics while training: "frozen" = inference mode (running stats
  # used and never updated; the paper's default), "batch" = batch statistics
  # with a moving-average update of the running ones.
  c.bn_stats = "frozen"
  # Flax convention (running = m * running + (1 - m) * batch; PyTorch's 0.1 is
  # Flax's 0.9); used with "batch". 0 = the architecture's default.
  c.bn_momentum = 0.0
  # AdaBN (jaxbn.target_stats): before the first stage, replace every BN layer's running
  # statistics by their average over this many augmented training batches (the target
  # data's, in place of the checkpoint's); 0 = keep the checkpoint's.
  c.bn_target_batches = 0

  c.warmup = stage("head", 1, 1e-3)
  c.finetune = stage("bn+head", 10, 1e-3)
  c.plateau_factor = 0.2
  c.plateau_patience = 1  # evaluations
  c.min_lr = 1e-6
  c.early_stopping_metric = "val_loss"  # val_loss | val_auc
  c.min_evals = 0  # jaxbn.budget: evaluate at least this often per stage (0 = per epoch)
  # jaxbn.ema: evaluate (and keep as best) an EMA of the trainable parameters; 0 = off.
  c.ema_decay = 0.0
  # Weight averaging (a uniform "model soup", Wortsman et al. 2022): the evaluated variables
  # of the soup_size best validation passes are kept (WORKDIR/soup) and their average is the
  # final model, evaluated on val and test in place of the single best checkpoint. 0 or 1 = off.
  c.soup_size = 0
  # jaxbn.tta: test-time augmentation views ("hflip,vflip,shift"; "" = off), reported
  # in results.json as tta_* fields beside the plain scores; tta_shift: × the image side.
  c.tta = ""
  c.tta_shift = 0.0625
  # False: never evaluate the test split (results.json test fields are null) — for
  # choosing a recipe on validation data only.
  c.eval_test = True

  c.parallel = "jit"  # jit (Mesh + NamedSharding, the pjit path) | pmap
  c.eval_every_steps = 0  # 0 = once per epoch
  c.log_every_steps = 20
  c.checkpoint_every_evals = 1
  c.keep_checkpoints = 2
  c.target_auc = 0.95  # steps / wall time to reach it are reported
  c.max_steps = 0  # 0 = no cap (tests use small caps)
  c.eval_max_batches = 0  # 0 = full validation / test sets
  return c


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """``path/to/config.py[:arg]`` → its ``get_config(arg)``, as ``--config=`` gives it.

  The one loader behind ``jaxbn.sweep`` (base configs, ``--train_config``),
  ``jaxbn.validate``'s error messages and ``jaxbn.bench_pipeline``.
  """
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"Config file {path!r} not found (from {spec!r}).")
  module_spec = importlib.util.spec_from_file_location(
      f"jaxbn_config_{abs(hash(os.path.abspath(path)))}", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"Config file {path!r} has no get_config().")
  return module.get_config(arg) if arg else module.get_config()


def apply_overrides(config: ml_collections.ConfigDict,
                    arg: str | None) -> ml_collections.ConfigDict:
  """Applies ``"a.b=1,c=x"`` overrides; unknown keys are an error.

  Values are Python literals, else strings; a tuple field also takes ``x`` or ``x+y``
  (``model.head_taps=stage-2``), as commas separate the overrides.
  """
  if not arg:
    return config
  for item in arg.split(","):
    if "=" not in item:
      raise ValueError(f"Config override {item!r} is not key=value.")
    key, raw = item.split("=", 1)
    node = config
    *parents, leaf = key.strip().split(".")
    for p in parents:
      if p not in node:
        raise ValueError(f"Unknown config key {key!r}: {p!r} is not a field.")
      node = node[p]
    if leaf not in node:
      raise ValueError(
          f"Unknown config key {key!r}; fields here: {', '.join(sorted(node.keys()))}."
      )
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    if isinstance(node[leaf], float) and isinstance(value, int):
      value = float(value)
    if isinstance(node[leaf], tuple) and isinstance(value, str):  # "a" or "a+b" for a tuple field
      value = tuple(value.split("+"))
    node[leaf] = value
  return config
