#!/usr/bin/env bash
# The exact commands that produced docs/acnorm/ (run from the repository root, CPU only).
# MEDMNIST_DIR: a folder holding the official retinamnist.npz and pneumoniamnist.npz
# (MedMNIST v2, Zenodo record 10519652, or the medmnist package). Re-running a sweep or a
# transferability command skips what finished and resumes what was interrupted.
set -euo pipefail
MEDMNIST_DIR=${MEDMNIST_DIR:?set MEDMNIST_DIR to a folder with the MedMNIST npz files}
export JAXBN_DATA_DIR=$MEDMNIST_DIR
RUNS=${RUNS:-/tmp/jaxbn_acnorm_runs}
# 1. AC-Norm vs vanilla BN, 6 modes x 3 seeds on RetinaMNIST (the sweep ran once with the
#    first five modes; acnorm_frozen was added to the config and the same command resumed it).
python -m jaxbn.sweep --config=configs/sweeps/acnorm.py --workdir=$RUNS/acn
python -m jaxbn.report $RUNS/acn --out=docs/acnorm/sweep \
    --title="AC-Norm vs vanilla BN on RetinaMNIST: EfficientNet-Lite0, 64 px, CPU budget"
# 2. Cost of the AC-Norm train step against the BN one, ResNet-50 channel counts.
python -m jaxbn.bench --archs=resnet50 --strategies=full,bn+head --norms=bn,acnorm \
    --bn_stats=batch --batch_size=16 --image_size=112 --reps=8 --out=$RUNS/bench_acnorm.json
cp $RUNS/bench_acnorm.json docs/acnorm/bench.json
# 3. AC-Corr ranking of four candidates on RetinaMNIST, validated by fine-tuning each one.
python -m jaxbn.main --config=configs/transferability.py --workdir=$RUNS/acc_retina \
    --config.data.name=retinamnist --config.data.data_dir=$MEDMNIST_DIR \
    --config.transfer.validate=True
cp $RUNS/acc_retina/transferability.{md,json} $RUNS/acc_retina/transferability_layers.png \
    docs/acnorm/
# 3b. The same ranking on PneumoniaMNIST (validation runs: 1 + 1 epochs = 146 steps).
python -m jaxbn.main --config=configs/transferability.py --workdir=$RUNS/acc_pneumonia \
    --config.data.name=pneumoniamnist --config.data.data_dir=$MEDMNIST_DIR \
    --config.transfer.validate=True --config.finetune.epochs=1
for ext in md json; do
  cp $RUNS/acc_pneumonia/transferability.$ext docs/acnorm/transferability_pneumoniamnist.$ext
done
cp $RUNS/acc_pneumonia/transferability_layers.png \
    docs/acnorm/transferability_layers_pneumoniamnist.png
# 4. The score's spread over seeds (batch and new head; scoring only). The outputs are
#    committed as transferability_seed{1,2}.{md,json}.
for seed in 1 2; do
  python -m jaxbn.main --config=configs/transferability.py --workdir=$RUNS/acc_retina_seed$seed \
      --config.seed=$seed --config.data.name=retinamnist \
      --config.data.data_dir=$MEDMNIST_DIR
done
for seed in 1 2; do
  for ext in md json; do
    cp $RUNS/acc_retina_seed$seed/transferability.$ext docs/acnorm/transferability_seed$seed.$ext
  done
done
