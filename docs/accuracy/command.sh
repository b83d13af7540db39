#!/usr/bin/env bash
# Issue 17: the exact commands behind docs/accuracy.md (run from the repository root, CPU only).
# RetinaMNIST is read from $MEDMNIST_DIR (JAXBN_DATA_DIR) or downloaded; PneumoniaMNIST is shipped.
set -euo pipefail
export JAXBN_OFFLINE=1 JAXBN_DATA_DIR=${MEDMNIST_DIR:?set MEDMNIST_DIR to the folder holding retinamnist.npz}
# A section that names configs/bn_only.py ran it as it was then (git log -- configs/bn_only.py);
# the lever rounds' presets pin the recipe they measured.

# 1. Levers, VALIDATION only (eval_test=False: the test split is never evaluated).
#    The base recipe (the pre-issue-17 bn_only defaults) ran as a plain run; its test
#    figures are computed by the trainer but not used (levers.json holds validation only).
nice -n 10 python -m jaxbn.main --config=configs/bn_only.py:finetune.min_steps=0,warmup.min_steps=0,min_evals=0 \
    --workdir=/tmp/acc/base64
nice -n 10 python -m jaxbn.sweep --config=configs/sweeps/accuracy.py --workdir=/tmp/acc/levers \
    --prune_checkpoints --only=size96,ema,rot_shift,label_smooth,epochs8,no_aug,lr3e-3,no_warmup
nice -n 10 python -m jaxbn.sweep --config=configs/sweeps/accuracy.py --workdir=/tmp/acc/levers2 \
    --compilation_cache_dir=/tmp/acc/levers/.jax_cache --prune_checkpoints --only=rot_shift,label_smooth,lr3e-3
nice -n 10 python -m jaxbn.sweep --config=configs/sweeps/accuracy.py --workdir=/tmp/acc/levers3 \
    --prune_checkpoints --only=ema,label_smooth,lr3e-3,epochs8
PYTHONPATH=. python docs/accuracy/levers_extract.py base=/tmp/acc/base64 /tmp/acc/levers /tmp/acc/levers2 \
    /tmp/acc/levers3

# 2. Round two, VALIDATION only: the three single-seed winners combined (8 BN+head epochs,
#    lr 3e-3, with and without 96 px), 3 seeds each (docs/accuracy/round2/).
nice -n 12 python -m jaxbn.sweep --config=configs/sweeps/accuracy.py:round2 --workdir=/tmp/acc/round2 \
    --prune_checkpoints
python -m jaxbn.report /tmp/acc/round2 --out=docs/accuracy/round2 \
    --title="Accuracy round two: validation only, PneumoniaMNIST, EfficientNet-Lite0"

# 3. The final table: configs/bn_only.py (now round two's winner: 96 px, 8 epochs, lr 3e-3),
#    3 seeds, PneumoniaMNIST and RetinaMNIST (the same recipe, only the data set changes),
#    TTA scores reported beside the plain ones. The test split is read here only.
python -m jaxbn.sweep --train_config=configs/bn_only.py:tta=hflip+shift --name=bn_only \
    --seeds=0,1,2 --datasets=pneumoniamnist,retinamnist --workdir=/tmp/acc/final2
#    Full fine-tuning at the same budget (the same stages and steps; lr 1e-4 as configs/full.py):
python -m jaxbn.sweep --train_config=configs/bn_only.py:tta=hflip+shift,finetune.strategy=full,finetune.lr=1e-4 \
    --name=full --seeds=0,1,2 --datasets=retinamnist --workdir=/tmp/acc/final2
python -m jaxbn.report /tmp/acc/final2 --out=docs/accuracy/final \
    --title="Issue 17: BN-only recipe (configs/bn_only.py), EfficientNet-Lite0, 28 px data at 96 px"
# The earlier final table (64 px, 4 epochs, lr 1e-3) was the same two sweeps in /tmp/acc/final.

# 4. Round three, VALIDATION only: levers over configs/bn_only.py on RetinaMNIST (seed 0, some
#    seed 1), backbones Lite1/Lite2, then Lite2's other seeds (docs/accuracy/round3.{json,csv}).
#    The first invocation ran the preset's own seeds (0,1) and was stopped after seed 1 of
#    probe150 and ema; this line gives its seed-0 runs.
nice -n 5 python -m jaxbn.sweep --config=configs/sweeps/accuracy.py:round3 --workdir=/tmp/acc/round3 \
    --prune_checkpoints --only=recipe,probe150,ema,label_smooth,lr1e-3,rot_shift,lr_warmup,lr3e-4 \
    --config.grid.seeds=0
nice -n 5 python -m jaxbn.sweep --config=configs/sweeps/accuracy.py:round3 --workdir=/tmp/acc/round3_archs \
    --prune_checkpoints --only=recipe --config.grid.seeds=0 \
    --config.grid.archs=efficientnet_lite1,efficientnet_lite2
nice -n 5 python -m jaxbn.sweep --config=configs/sweeps/accuracy.py:round3 --workdir=/tmp/acc/round3_lite2 \
    --prune_checkpoints --only=recipe --config.grid.seeds=1,2 --config.grid.archs=efficientnet_lite2
PYTHONPATH=. python docs/accuracy/levers_extract.py --name=round3 /tmp/acc/round3 /tmp/acc/round3_archs \
    /tmp/acc/round3_lite2
#    Lite2 on PneumoniaMNIST, 3 seeds: its validation figures decided against adopting it.
python -m jaxbn.sweep --train_config=configs/bn_only.py:tta=hflip+shift,model.arch=efficientnet_lite2 \
    --name=bn_only_lite2 --seeds=0,1,2 --datasets=pneumoniamnist --workdir=/tmp/acc/final_lite2

# 5. Early stopping: the rule replayed on the validation curves recorded before it, then the
#    table's RetinaMNIST runs again with it (docs/accuracy/final_early_stop/).
PYTHONPATH=. python docs/accuracy/early_stopping_replay.py /tmp/acc/final2 /tmp/acc/round2 /tmp/acc/round3
python -m jaxbn.sweep --train_config=configs/bn_only.py:tta=hflip+shift --name=bn_only \
    --seeds=0,1,2 --datasets=retinamnist --workdir=/tmp/acc/final3
python -m jaxbn.sweep --train_config=configs/bn_only.py:tta=hflip+shift,finetune.strategy=full,finetune.lr=1e-4 \
    --name=full --seeds=0,1,2 --datasets=retinamnist --workdir=/tmp/acc/final3
python -m jaxbn.report /tmp/acc/final3 --out=docs/accuracy/final_early_stop \
    --title="RetinaMNIST with early stopping: the final table's runs again (configs/bn_only.py, Lite0)"

# 6. Round four, VALIDATION only: TruncatedTL cuts, 128 px and head dropout over the whole-network
#    recipe on RetinaMNIST (seed 0), the cuts' seeds 1 and 2, then one PneumoniaMNIST run per cut
#    (docs/accuracy/round4.{json,csv}). The adoption rule was fixed before the PneumoniaMNIST runs.
nice -n 5 python -m jaxbn.sweep --config=configs/sweeps/accuracy.py:round4 --workdir=/tmp/acc/round4 \
    --prune_checkpoints
nice -n 5 python -m jaxbn.sweep --config=configs/sweeps/accuracy.py:round4 --workdir=/tmp/acc/round4 \
    --prune_checkpoints --only=cut_stage5,cut_stage6,cut_stage4 --config.grid.seeds=1,2
nice -n 5 python -m jaxbn.sweep --config=configs/sweeps/accuracy.py:round4 --workdir=/tmp/acc/round4_pneumonia \
    --prune_checkpoints --only=cut_stage5,cut_stage6,cut_stage4 --config.grid.datasets=pneumoniamnist

# 7. The final table of the adopted recipe (configs/bn_only.py cut after every stage but the last),
#    3 seeds per data set, and full fine-tuning of the same truncated network at the same budget.
#    The test split is read here only.
python -m jaxbn.sweep --train_config=configs/bn_only.py:tta=hflip+shift --name=bn_only \
    --seeds=0,1,2 --datasets=pneumoniamnist,retinamnist --workdir=/tmp/acc/final4
python -m jaxbn.sweep --train_config=configs/bn_only.py:tta=hflip+shift,finetune.strategy=full,finetune.lr=1e-4 \
    --name=full --seeds=0,1,2 --datasets=retinamnist --workdir=/tmp/acc/final4
python -m jaxbn.report /tmp/acc/final4 --out=docs/accuracy/final_truncated \
    --title="Issue 17: configs/bn_only.py cut after stage 6 (TruncatedTL), EfficientNet-Lite0, 28 px data at 96 px"
#    Its per-seed figures (runs.json; this script regenerates the file byte for byte):
PYTHONPATH=. python docs/accuracy/final_extract.py /tmp/acc/final4 docs/accuracy/final_truncated
#    After the adoption: the same cut on Lite1 and Lite2 (RetinaMNIST seed 0, validation only);
#    round4.{json,csv} hold every round-four run.
nice -n 5 python -m jaxbn.sweep --config=configs/sweeps/accuracy.py:round4 --workdir=/tmp/acc/round4_archs \
    --prune_checkpoints --only=cut_stage6 --config.grid.archs=efficientnet_lite2,efficientnet_lite1
PYTHONPATH=. python docs/accuracy/levers_extract.py --name=round4 /tmp/acc/round4 /tmp/acc/round4_pneumonia \
    /tmp/acc/round4_archs

# Rounds five to nine: a VALIDATION-only round of configs/sweeps/accuracy.py, and its data files
# (docs/accuracy/ROUND.{json,csv}; LABEL=RUN_DIR adds single runs outside the round's sweep).
lever_round() {
  nice -n 5 python -m jaxbn.sweep --config=configs/sweeps/accuracy.py:"$1" --workdir=/tmp/acc/"$1" \
      --prune_checkpoints
}
extract() {
  PYTHONPATH=. python docs/accuracy/levers_extract.py --name="$1" /tmp/acc/"$1" "${@:2}"
}
# A fold round (round twelve on): run it, extract it, and pair its runs with round eleven's
# recipe runs of the same seed and fold; further arguments are earlier rounds' data files that
# the comparison includes.
fold_round() {
  lever_round "$1" && extract "$1" && PYTHONPATH=. python docs/accuracy/paired.py \
      --baseline=recipe docs/accuracy/round11.json "${@:2}" docs/accuracy/"$1".json
}
# Round eight's pair (BN-stage lr 1e-3 + rotations + shifts) as final-table runs: test figures
# computed, not read unless a round's rule adopts it.
PAIR=configs/bn_only.py:tta=hflip+shift,finetune.lr=1e-3,data.rotate_deg=10.0,data.shift=0.0625
P=pneumoniamnist__efficientnet_lite0__bn_only__seed

# 8. Round five: a one-seed screen of levers over the adopted recipe.
lever_round round5 && extract round5

# 9. Round six: BN-stage lr 1e-3 over the adopted recipe, 3 seeds, with and without a doubled
#    data-sized minimum (not adopted).
lever_round round6 && extract round6

# 10. Round seven: an EMA of the trainable weights (alone and with lr 1e-3) and rotations +
#     shifts over the adopted recipe, 3 seeds (not adopted).
lever_round round7 && extract round7

# 11. Round eight: round seven's gains combined (the pair, with and without the EMA), 3 seeds;
#     both passed on RetinaMNIST, then both failed the PneumoniaMNIST bound (the EMA's seed 2
#     stopped once it could no longer pass), so neither was adopted.
lever_round round8
python -m jaxbn.sweep --name=bn_only --seeds=0,1,2 --datasets=pneumoniamnist --workdir=/tmp/acc/final5 \
    --train_config="$PAIR"
python -m jaxbn.sweep --name=bn_only --seeds=0,1 --datasets=pneumoniamnist --workdir=/tmp/acc/final6 \
    --train_config="$PAIR,ema_decay=0.99"
extract round8 lr1e-3_rot_shift=/tmp/acc/final5/runs/${P}0 lr1e-3_rot_shift=/tmp/acc/final5/runs/${P}1 \
    lr1e-3_rot_shift=/tmp/acc/final5/runs/${P}2 ema_lr1e-3_rot_shift=/tmp/acc/final6/runs/${P}0 \
    ema_lr1e-3_rot_shift=/tmp/acc/final6/runs/${P}1

# 12. Round nine: the pair with 16 BN-stage epochs on PneumoniaMNIST (seed 0 in the round; seeds
#     1 and 2 as final-table runs), and the same on RetinaMNIST (round eight's runs step for step:
#     300 minimum steps > 16 x 16).
lever_round round9
python -m jaxbn.sweep --name=bn_only --seeds=1,2 --datasets=pneumoniamnist --workdir=/tmp/acc/final7 \
    --train_config="$PAIR,finetune.epochs=16"
python -m jaxbn.sweep --name=bn_only --seeds=0,1,2 --datasets=retinamnist --workdir=/tmp/acc/final7 \
    --train_config="$PAIR,finetune.epochs=16"
extract round9 lr1e-3_rot_shift_e16=/tmp/acc/final7/runs/${P}1 \
    lr1e-3_rot_shift_e16=/tmp/acc/final7/runs/${P}2

# 13. The final table of round nine's recipe, now configs/bn_only.py (lr 1e-3, rotations + shifts,
#     16 BN-stage epochs): §12's five runs, PneumoniaMNIST seed 0 with the test split on, and full
#     fine-tuning of the same cut network with the same data and budget. The test split is read
#     here only.
python -m jaxbn.sweep --name=bn_only --seeds=0, --datasets=pneumoniamnist --workdir=/tmp/acc/final7 \
    --train_config="$PAIR,finetune.epochs=16"
python -m jaxbn.sweep --train_config=configs/bn_only.py:tta=hflip+shift,finetune.strategy=full,finetune.lr=1e-4 \
    --name=full --seeds=0,1,2 --datasets=retinamnist --workdir=/tmp/acc/final7
python -m jaxbn.report /tmp/acc/final7 --out=docs/accuracy/final_round9 \
    --title="Issue 17: round nine's recipe (configs/bn_only.py), EfficientNet-Lite0 cut after stage 6, 28 px data at 96 px"
PYTHONPATH=. python docs/accuracy/final_extract.py /tmp/acc/final7 docs/accuracy/final_round9

# 14. Round ten: BN batch statistics and AC-Norm over round nine's recipe, RetinaMNIST, 3 seeds
#     (not adopted).
lever_round round10 && extract round10

# 15. Round eleven: round nine's recipe and the cut recipe on 5-fold cross-validation of RetinaMNIST
#     train+val (seed 0), and the fold-by-fold comparison.
lever_round round11 && extract round11
PYTHONPATH=. python docs/accuracy/paired.py --baseline=recipe docs/accuracy/round11.json

# 16. Round twelve: mixup and rotations + shifts at twice the strength on round eleven's folds
#     (seed 0), paired with round eleven's recipe runs (not adopted). Then round eleven's seed 1
#     (the preset now holds seeds 0 and 1; the same command skips the finished seed-0 runs).
fold_round round12
lever_round round11 && extract round11
PYTHONPATH=. python docs/accuracy/paired.py --baseline=recipe docs/accuracy/round11.json

# 17. Round thirteen: twice the early-stopping patience on the folds (seed 0), paired with round
#     eleven's recipe runs (not adopted).
fold_round round13

# 18. Round fourteen: a multi-scale head (model.head_taps: Lite0's stage 5, and stages 4 + 5,
#     beside the cut's stage 6) on the folds (seed 0), paired with round eleven's recipe runs.
fold_round round14

# 19. Round fifteen: round fourteen's stage-5 tap with seed 1 on the same folds, paired with round
#     eleven's seed-1 recipe runs (did not replicate; not adopted).
fold_round round15 docs/accuracy/round14.json

# 20. Round sixteen: half the batch (batch_size=32) on the folds, seeds 0 and 1, paired with
#     round eleven's recipe runs of both seeds.
fold_round round16

# 21. Round seventeen: class-balanced cross-entropy (class_weights=balanced) on the folds, seeds
#     0 and 1, paired with round eleven's recipe runs of both seeds. Stopped (SIGTERM) after four
#     runs, once 8 of 10 gains were out of reach; rounds eighteen, nineteen and twenty-one too.
fold_round round17

# 22. Round eighteen: the stage-5 tap and batch 32 together on the folds, seeds 0 and 1, paired
#     with round eleven's recipe runs of both seeds.
fold_round round18

# 23. Round nineteen: head dropout 0.5 (model.dropout_rate=0.5) on the folds, seeds 0 and 1,
#     paired with round eleven's recipe runs of both seeds.
fold_round round19

# 24. Round twenty: BN-stage lr 2e-3 (finetune.lr=2e-3) on the folds, seeds 0 and 1, paired with
#     round eleven's recipe runs of both seeds.
fold_round round20

# 25. Round twenty-one: seed 2 of the recipe and of lr 2e-3 on the same folds; the 15 pairs of
#     rounds eleven, twenty and twenty-one together.
fold_round round21 docs/accuracy/round20.json

# 26. Round twenty-two: no head dropout (model.dropout_rate=0.0) on the folds, seeds 0 and 1,
#     paired with round eleven's recipe runs of both seeds. Stopped after six runs.
fold_round round22

# 27. Round twenty-three: average and max pooling (model.pool=avgmax) on the folds, seeds 0 and 1,
#     paired with round eleven's recipe runs of both seeds. Stopped after six runs.
fold_round round23

# 28. Round twenty-four: BN-stage lr 3e-3 (finetune.lr=3e-3) on the folds, seeds 0 and 1, paired
#     with round eleven's recipe runs of both seeds.
fold_round round24

# 29. Round twenty-five: lr 3e-3 with a 50-step linear warm-up of the BN stage
#     (finetune.lr=3e-3,finetune.warmup_steps=50) on the folds, seeds 0 and 1, paired with round
#     eleven's recipe runs of both seeds (passed round sixteen's rule).
fold_round round25

# 30. Round twenty-five's final table, the test split read once: its lever on both data sets
#     (the PneumoniaMNIST runs were its validation check) and full fine-tuning of the same net on
#     RetinaMNIST. Not adopted. Then round nine's recipe timed again (seed 0) on the same CPU.
L25=configs/bn_only.py:tta=hflip+shift,finetune.lr=3e-3,finetune.warmup_steps=50
for data in pneumoniamnist retinamnist; do
  python -m jaxbn.sweep --name=bn_only --seeds=0,1,2 --datasets=$data --workdir=/tmp/acc/final25 \
      --train_config="$L25"
done
python -m jaxbn.sweep --name=full --seeds=0,1,2 --datasets=retinamnist --workdir=/tmp/acc/final25 \
    --train_config="$L25,finetune.strategy=full,finetune.lr=1e-4"
python -m jaxbn.report /tmp/acc/final25 --out=docs/accuracy/final_round25 \
    --title="Issue 17: round twenty-five's recipe (round nine's with BN-stage lr 3e-3 and a 50-step warm-up), EfficientNet-Lite0 cut after stage 6, 28 px data at 96 px"
PYTHONPATH=. python docs/accuracy/final_extract.py /tmp/acc/final25 docs/accuracy/final_round25
python -m jaxbn.sweep --name=recipe --seeds=0, --datasets=pneumoniamnist --workdir=/tmp/acc/time25 \
    --train_config=configs/bn_only.py:tta=hflip+shift

# 31. Round twenty-six: AdaBN (bn_target_batches=32: BN statistics re-estimated on 32 augmented
#     training batches before the head stage) on the folds, seeds 0 and 1, paired with round
#     eleven's recipe runs of both seeds. Stopped after four runs (all four lost).
fold_round round26

# 32. Round twenty-seven: a uniform soup of the 5 best validation passes (soup_size=5) on the
#     folds, seeds 0 and 1, paired with round eleven's recipe runs of both seeds. Stopped after
#     four runs (three lost).
fold_round round27

# 33. Round twenty-eight: soft ordinal labels (ordinal_scale=2.0, SORD) on the folds, seeds 0 and
#     1, paired with round eleven's recipe runs of both seeds. Stopped after five runs (four lost).
fold_round round28

# 34. Round twenty-nine: a 150-step head stage (warmup.min_steps=150) on the folds, seeds 0 and 1,
#     paired with round eleven's recipe runs of both seeds. Stopped after six runs (three lost).
fold_round round29

# 35. Round thirty: bicubic upsampling (data.resize=bicubic) on the folds, seeds 0 and 1, paired
#     with round eleven's recipe runs of both seeds. Stopped after five runs (three lost).
fold_round round30

# 36. Round thirty-one: AUC maximisation (auc_loss_weight=1.0) on the folds, seeds 0 and 1, paired
#     with round eleven's recipe runs of both seeds. Stopped after three runs (all three lost).
fold_round round31

# 37. Round thirty-two: stochastic depth (model.drop_path_rate=0.2) on the folds, seeds 0 and 1,
#     paired with round eleven's recipe runs of both seeds. All ten runs (6 gained).
fold_round round32

# 38. Round thirty-three: intensity augmentation (data.brightness=0.1, data.contrast=0.2) on the
#     folds, seeds 0 and 1, paired with round eleven's recipe runs of both seeds. Stopped after
#     eight runs (four lost).
fold_round round33

# 39. How finely the test split resolves RetinaMNIST's AUC: the final table's BN-only runs again,
#     their checkpoints kept (the same test AUCs to every digit), then a bootstrap over the 400
#     test images. Reads the test split of the published recipe only.
python -m jaxbn.sweep --name=bn_only --seeds=0,1,2 --datasets=retinamnist --workdir=/tmp/acc/boot \
    --train_config="configs/bn_only.py:tta=hflip+shift"
PYTHONPATH=. python docs/accuracy/test_bootstrap.py /tmp/acc/boot \
    > docs/accuracy/final_round9/test_bootstrap.md
