"""Where a config becomes objects: the model, its initial variables, the stages' optimizers.

The trainer (:mod:`jaxbn.train`), the benchmark's pipeline timing, AC-Corr
transferability and the TruncatedTL search all build their runs here, so
``config.model`` is read in one place:

* :func:`build_model` — ``create_model`` with the config's arch, dtype, norm
  (AC-Norm's own BN momentum, arXiv:2307.15282), dropout, TruncatedTL cut and
  widths;
* :func:`initial_variables` — ``model.init`` parsed once
  (:func:`jaxbn.weights.init.parse_init`), pretrained weights filled into the
  abstract variables of the model already built;
* :func:`stages_of`, :func:`build_optimizer` — the warm-up / fine-tune stages and
  each one's masked optax optimizer (``jaxbn.masks.make_optimizer``).

The train state is ``jaxbn.step.TrainState.create(variables, tx)``.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import optax

from jaxbn import masks
from jaxbn.models import acnorm, create_model, norm as norm_lib
from jaxbn.models.registry import compute_dtype
from jaxbn.weights import init as init_lib


def build_model(config: ml_collections.ConfigDict, num_outputs: int,
                bn_axis_name: str | None = None):
  """The configured model; ``bn_axis_name``: the pmap axis of cross-replica BN statistics."""
  m = config.model
  momentum = config.get("bn_momentum") or None
  if momentum is None and norm_lib.parse(m.norm).is_acnorm:  # AC-Norm's own default (0.81)
    momentum = acnorm.ACNORM_MOMENTUM
  optional = {
      "bn_momentum": momentum,
      "bn_axis_name": bn_axis_name,
      "stage_widths": tuple(m.stage_widths) if m.get("stage_widths") else None,
      "drop_path_rate": m.get("drop_path_rate") or None,
  }
  return create_model(
      m.arch, num_classes=num_outputs, dtype=compute_dtype(m.dtype), norm=m.norm,
      dropout_rate=m.dropout_rate, truncate_at=m.get("truncate_at"),
      head_taps=tuple(m.get("head_taps") or ()), pool=m.get("pool", "avg"),
      **{k: v for k, v in optional.items() if v is not None},
  )


def initial_variables(config: ml_collections.ConfigDict, model, rng) -> dict[str, Any]:
  """``{'params', 'batch_stats', ...}`` of ``model`` from ``config.model.init``.

  See :func:`jaxbn.weights.init.initial_variables`; ``rng`` is used by random
  and Transfusion initialisations only.
  """
  m = config.model
  return init_lib.initial_variables(
      model, rng, arch=m.arch, init=m.init, transfer_up_to=m.get("transfer_up_to"),
      stage_widths=m.get("stage_widths"))


def stages_of(config: ml_collections.ConfigDict) -> list[tuple[str, ml_collections.ConfigDict]]:
  """``[(name, stage config)]`` of the stages that train (``epochs > 0``), in order."""
  stages = [(name, config[name]) for name in ("warmup", "finetune") if config[name].epochs > 0]
  if not stages:
    raise ValueError("Both stages have epochs=0: nothing to train.")
  return stages


def build_optimizer(
    config: ml_collections.ConfigDict, stage: ml_collections.ConfigDict, num_steps: int, labels: Any
) -> optax.GradientTransformation:
  """The stage's optimizer: trainable leaves get it, frozen ones hold no state."""
  warmup = stage.warmup_steps
  if stage.schedule == "cosine":
    lr = optax.cosine_decay_schedule(stage.lr, max(1, num_steps - warmup))
  elif stage.schedule in ("constant", "plateau"):  # plateau scales lr_scale on the host
    lr = optax.constant_schedule(stage.lr)
  else:
    raise ValueError(f"Unknown schedule {stage.schedule!r}: constant | cosine | plateau.")
  if warmup:
    lr = optax.join_schedules([optax.linear_schedule(0.0, stage.lr, warmup), lr], [warmup])
  if config.optimizer == "adam":
    tx = optax.adam(lr)
  elif config.optimizer == "adamw":
    tx = optax.adamw(lr, weight_decay=config.weight_decay)
  elif config.optimizer == "sgd":
    tx = optax.sgd(lr, momentum=0.9)
  else:
    raise ValueError(f"Unknown optimizer {config.optimizer!r}: adam | adamw | sgd.")
  if config.grad_clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), tx)
  return masks.make_optimizer(tx, labels)
