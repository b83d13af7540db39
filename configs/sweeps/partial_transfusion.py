r"""The partial-transfusion comparison (Kanavati & Tsuneki, MIDL 2021) as a jaxbn sweep.

  python -m jaxbn.sweep --config=configs/sweeps/partial_transfusion.py --workdir=/tmp/pt
  python -m jaxbn.sweep --config=configs/sweeps/partial_transfusion.py:paper --workdir=...
  python -m jaxbn.report /tmp/pt --out=/tmp/pt/report

Every mode of the paper (Kanavati & Tsuneki, arXiv:2102.05543) is a string of
``key=value`` overrides over :func:`jaxbn.config.base_config` (the syntax of
``--config=x.py:a=1,b=2``). A run's config is ``base_config()`` + ``common`` + its dataset's ``overrides`` +
``model.arch=<arch>`` + its strategy's overrides + ``seed=<seed>``, in that
order. ``{placeholders}`` in the strategy strings come from the dataset's
``budget`` (epoch counts differ per dataset: RetinaMNIST has 1,080 training
images, PneumoniaMNIST 4,708), so every mode of one dataset gets the same total
number of epochs: two-stage modes ``{head_epochs}`` of head warm-up then
``{finetune_epochs}``, one-stage modes ``{epochs}`` = their sum.

Modes (all Adam; BN statistics "frozen" = inference mode, the paper's default):

  fc_then_full    head 1e-3, then everything 1e-4 (paper 1e-5, see below)
  fc_then_bn      head 1e-3 for exactly {head_epochs}, then BN γ,β + head 1e-3 (proposed)
  fc              head only (linear probe on frozen features)
  bn_and_fc       BN γ,β + head from step 0
  *_bma           the same with batch statistics in training and a moving-average
                  update of the running ones (momentum 0.95, the paper's fc_bma)
  rnd_bn_and_fc   random init, BN γ,β + head

Presets (the text after ``:``):

* ``cpu`` (default): a budget for a 2-core CPU — EfficientNet-Lite0,
  PneumoniaMNIST + RetinaMNIST at 32 px, a few epochs with a cosine decay, one
  seed. Far shorter than the paper: read the numbers as a short-budget
  comparison, not as converged results. Measured (docs/results/report.md): 16 of
  the 18 runs (``fc_then_full_bma`` left out) in 64 min on a 2-core x86-64 CPU, no
  GPU; test AUC PneumoniaMNIST / RetinaMNIST: fc_then_bn 0.960 / 0.752,
  fc_then_full 0.960 / 0.748, bn_and_fc 0.964 / 0.754, fc 0.916 / 0.700,
  fc_then_bn_bma 0.860 / 0.644.
* ``paper``: the paper's protocol as far as jaxbn's trainer expresses it —
  reduce-on-plateau (×0.2, patience 1 epoch), early stopping on val loss
  (patience 6 epochs; stage ≤100 epochs for the head, ≤500 after), full
  fine-tuning at 1e-5, three seeds, three backbones, 224 px. Days of GPU time.

MedMNIST files are downloaded from Zenodo on first use, or read from
``$JAXBN_DATA_DIR`` (PneumoniaMNIST also ships with jaxbn).

Grid axes are comma-separated strings so they can be narrowed on the command
line: ``--config.grid.strategies=fc_then_bn,fc_then_full --config.grid.seeds=0,1``.
``grid.strategies`` also sets the order of the report's rows.
"""

from __future__ import annotations

import ml_collections


_HEAD = "warmup.strategy=head,warmup.epochs={head_epochs},warmup.lr=1e-3,warmup.schedule={head_schedule}"
_NO_WARMUP = "warmup.epochs=0"
_BMA = "bn_stats=batch,bn_momentum=0.95"


def _finetune(strategy: str, epochs: str, lr: str, schedule: str) -> str:
  return (f"finetune.strategy={strategy},finetune.epochs={epochs},finetune.lr={lr},"
          f"finetune.schedule={schedule}")


def strategies(full_lr: str, schedule: str, probe_epochs: str = "{head_epochs}") -> dict[str, str]:
  """The paper's modes as override strings (names follow the paper's code)."""
  # Head warm-up: constant lr, or the paper's reduce-on-plateau when the run uses it.
  head = _HEAD.replace("{head_schedule}", "plateau" if schedule == "plateau" else "constant")
  probe = head.replace("{head_epochs}", probe_epochs)
  modes = {
      "fc_then_full": f"{probe},{_finetune('full', '{finetune_epochs}', full_lr, schedule)}",
      "fc_then_bn": f"{head},{_finetune('bn+head', '{finetune_epochs}', '1e-3', schedule)}",
      "fc": f"{_NO_WARMUP},{_finetune('head', '{epochs}', '1e-3', schedule)}",
      "bn_and_fc": f"{_NO_WARMUP},{_finetune('bn+head', '{epochs}', '1e-3', schedule)}",
  }
  for name in list(modes):
    modes[f"{name}_bma"] = f"{modes[name]},{_BMA}"
  modes["rnd_bn_and_fc"] = f"{modes['bn_and_fc']},model.init=random"
  return modes


def _dataset(overrides: str, head_epochs: float, finetune_epochs: float,
             **extra) -> ml_collections.ConfigDict:
  budget = dict(head_epochs=head_epochs, finetune_epochs=finetune_epochs,
                epochs=head_epochs + finetune_epochs, **extra)
  return ml_collections.ConfigDict(dict(overrides=overrides, budget=budget))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  preset = arg or "cpu"
  if preset not in ("cpu", "paper"):
    raise ValueError(f"Unknown preset {preset!r}: cpu | paper.")
  c = ml_collections.ConfigDict()
  c.name = f"partial_transfusion ({preset})"
  c.preset = preset
  c.grid = ml_collections.ConfigDict()
  c.datasets = ml_collections.ConfigDict()
  retina = "data.name=retinamnist"
  pneumonia = "data.name=pneumoniamnist"
  if preset == "cpu":
    # Measured on a 2-core CPU (docs/results/report.md states the budget).
    # log_every_steps=2: the report's step time is the median of clu's
    # steps_per_sec over 2-step intervals, few of which hold an evaluation.
    c.common = "data.image_size=32,batch_size=64,log_every_steps=2,keep_checkpoints=1"
    c.strategies = ml_collections.ConfigDict(strategies(full_lr="1e-4", schedule="cosine"))
    # ~73 steps/epoch (PneumoniaMNIST), ~16 (RetinaMNIST) at batch 64; evaluate
    # ~4x per epoch / every 8 steps so the curves have points.
    c.datasets.pneumoniamnist = _dataset(
        f"{pneumonia},eval_every_steps=18,target_auc=0.95", head_epochs=1, finetune_epochs=1)
    c.datasets.retinamnist = _dataset(
        f"{retina},eval_every_steps=8,target_auc=0.7", head_epochs=1, finetune_epochs=4)
    c.grid.archs = "efficientnet_lite0"
    c.grid.seeds = "0"
  else:
    patience = ("warmup.early_stopping_patience=6,finetune.early_stopping_patience=6,"
                "plateau_patience=1,early_stopping_metric=val_loss")
    c.common = f"data.image_size=224,batch_size=32,{patience}"
    c.strategies = ml_collections.ConfigDict(
        strategies(full_lr="1e-5", schedule="plateau", probe_epochs="{probe_epochs}"))
    c.datasets.pneumoniamnist = _dataset(
        f"{pneumonia},target_auc=0.95", head_epochs=1, finetune_epochs=500, probe_epochs=100)
    c.datasets.retinamnist = _dataset(
        f"{retina},target_auc=0.7", head_epochs=1, finetune_epochs=500, probe_epochs=100)
    c.grid.archs = "efficientnet_lite0,resnet50,densenet121"
    c.grid.seeds = "0,1,2"
  c.grid.strategies = ("fc_then_full,fc_then_bn,fc,bn_and_fc,fc_then_bn_bma,fc_then_full_bma,"
                       "fc_bma,bn_and_fc_bma,rnd_bn_and_fc")
  c.grid.datasets = "pneumoniamnist,retinamnist"
  return c
