#!/usr/bin/env bash
# The exact commands that produced docs/results/ (run from the repository root, CPU only).
# RetinaMNIST is read from $JAXBN_DATA_DIR (a folder with the official retinamnist.npz) or
# downloaded from Zenodo. The sweep ran as two invocations: the first (whole grid) was
# stopped after 4 runs to fit a time budget on a 2-core CPU, the second resumed it without
# the costliest mode (fc_then_full_bma; its compilation alone took minutes there). Finished
# runs are skipped and an interrupted run resumes from its checkpoint, so re-running
# either line continues where it stopped.
set -euo pipefail
python -m jaxbn.sweep --config=configs/sweeps/partial_transfusion.py \
    --workdir=/tmp/jaxbn_partial_transfusion --prune_checkpoints
python -m jaxbn.sweep --config=configs/sweeps/partial_transfusion.py \
    --workdir=/tmp/jaxbn_partial_transfusion --prune_checkpoints \
    --only=fc_then_full,fc_then_bn,fc,bn_and_fc,fc_then_bn_bma,fc_bma,bn_and_fc_bma,rnd_bn_and_fc
python -m jaxbn.report /tmp/jaxbn_partial_transfusion --out=docs/results \
    --title="Partial transfusion on MedMNIST: EfficientNet-Lite0, 32 px, CPU budget"
