r"""TruncatedTL cut search: which prefix of the backbone to keep (``jaxbn.truncated``).

Trains every block-level cut (after each stage) and the full network, then the
layer-level cuts between the two block-level neighbours of the best one, each
in ``WORKDIR/runs/<cut>``; chooses on validation AUC (never test) and writes
``WORKDIR/truncated_search.{md,json}``: params, MACs, inference latency at batch
1 and 64 (all models timed round-robin in one process, ratio to the full
network), validation AUC, and the test AUC of the chosen cut.

  python -m jaxbn.main --config=configs/truncated_search.py --workdir=/tmp/ttl_search
  python -m jaxbn.main --config=configs/truncated_search.py --workdir=/tmp/ttl_r50 \
      --config.model.arch=resnet50 --config.data.image_size=224 \
      --config.search.block_cuts=layer2,layer3

Defaults: EfficientNet-Lite0 ImageNet weights on PneumoniaMNIST (shipped,
offline) at 32 px with a short budget per cut: head warm-up for half an epoch
(lr 1e-3), then every kept weight for 1.5 epochs (lr 3e-4, cosine), BN
statistics frozen. Raise ``data.image_size`` and ``finetune.epochs`` for a real
study.

Result and runtime: to be re-measured; no search output is committed yet
(docs/truncated.md).
"""

import ml_collections

from jaxbn.config import apply_overrides, base_config, stage


def get_config(arg=None):
  c = base_config()
  c.task = "truncated_search"
  c.model.arch = "efficientnet_lite0"
  c.data.image_size = 32
  c.warmup = stage("head", epochs=0.5, lr=1e-3)
  c.finetune = stage("full", epochs=1.5, lr=3e-4, schedule="cosine")
  c.search = ml_collections.ConfigDict(dict(
      # Block-level candidates, comma/"+"-separated; "" = every block-level cut of the arch.
      block_cuts="",
      include_full=True,  # train the untruncated network as a candidate (the TL baseline)
      layer_level=True,  # second stage: layer-level cuts around the best block
      latency_batch_sizes="1,64",
      latency_reps=30,  # round-robin timed calls per (model, batch size); median reported
  ))
  return apply_overrides(c, arg)
