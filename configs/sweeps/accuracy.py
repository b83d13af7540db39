r"""The accuracy lever study: one change at a time over the BN-only recipe, on VALIDATION AUC.

  python -m jaxbn.sweep --config=configs/sweeps/accuracy.py --workdir=/tmp/levers
  python -m jaxbn.report /tmp/levers --out=/tmp/levers/report

Every run trains BN γ,β + head (``configs/bn_only.py``'s stages, given here as
overrides over :func:`jaxbn.config.base_config`) with ``eval_test=False``: the
test split is never evaluated, so the levers are chosen on validation data only.
Every run also reports TTA (``tta=hflip+shift``) validation AUC beside the plain
one; TTA is evaluation-only, so it needs no run of its own.

``base`` is the starting recipe (the earlier bn_only defaults: 64 px,
Lite0, crop + horizontal flip, head 1 epoch then BN+head 4 epochs at 1e-3,
cosine); each other strategy changes one thing. Architectures are the
``grid.archs`` axis (``--config.grid.archs=efficientnet_lite0,efficientnet_lite1``).
Presets (text after ``:``), one per round of docs/accuracy.md:

* ``levers`` (default): one lever at a time over the earlier recipe, PneumoniaMNIST;
* ``round2``: combinations of the levers that helped in round one;
* ``round3``: levers over the round-two recipe, ``configs/bn_only.py`` itself, on
  RetinaMNIST, whose validation AUC peaks at the end of the head warm-up;
* ``round4``: TruncatedTL cuts, 128 px and head dropout over that recipe (the stage-6 cut
  won and is now in ``configs/bn_only.py``);
* ``round5``: a one-seed screen of levers over the recipe with the cut;
* ``round6``: round five's lead, BN+head lr 1e-3, over 3 seeds, with and without a longer
  data-sized minimum;
* ``round7``: an EMA of the trainable weights and rotations + shifts, 3 seeds;
* ``round8``: round seven's two gains combined;
* ``round9``: round eight's pair with twice the epochs, on PneumoniaMNIST (adopted);
* ``round10``: BN statistics re-estimated on the target data, and AC-Norm, 3 seeds;
* ``round11``: round nine's recipe against the cut recipe on 5-fold cross-validation;
* ``round12``: mixup and stronger rotations + shifts on the same folds;
* ``round13``: twice the early-stopping patience on the same folds;
* ``round14``: a multi-scale head (``model.head_taps``) on the same folds;
* ``round15``: round fourteen's stage-5 tap again, with seed 1.

Each round over ``configs/bn_only.py`` pins the recipe it measured (``CUT_RECIPE``,
``WHOLE_NETWORK``, ``ROUND9_RECIPE``), so later changes to that file do not change what it ran.
"""

from __future__ import annotations

import ml_collections

# RetinaMNIST is downloaded from Zenodo on first use, or read from $JAXBN_DATA_DIR.

# Every run: the test split never evaluated, TTA validation AUC reported beside the plain one.
VALIDATION_ONLY = "eval_test=False,tta=hflip+shift"
BASE = ("warmup.strategy=head,warmup.epochs=1,warmup.lr=1e-3,"
        "finetune.strategy=bn+head,finetune.epochs=4,finetune.lr=1e-3,finetune.schedule=cosine,"
        "data.image_size=64,data.augment=True," + VALIDATION_ONLY)
# Rounds five to nine pin the cut recipe they measured (BN stage 8 epochs at lr 3e-3, no
# rotations, shifts or EMA), and rounds three and four also the whole network (before round
# four's cut), so their run configs stay what they measured when configs/bn_only.py changes.
CUT_RECIPE = (VALIDATION_ONLY + ",finetune.epochs=8,finetune.lr=3e-3,"
              "data.rotate_deg=0.0,data.shift=0.0,ema_decay=0.0")
WHOLE_NETWORK = CUT_RECIPE + ",model.truncate_at=None"
# Round ten and later pin round nine's recipe (configs/bn_only.py since stop 27: BN stage 16
# epochs at lr 1e-3, rotations and shifts, frozen BN statistics, BN layers).
ROUND9_RECIPE = (VALIDATION_ONLY + ",finetune.epochs=16,finetune.lr=1e-3,"
                 "data.rotate_deg=10.0,data.shift=0.0625,ema_decay=0.0,"
                 "bn_stats=frozen,model.norm=bn,mixup_alpha=0.0,"
                 "finetune.early_stopping_patience=4,model.head_taps=(),class_weights=none,"
                 "model.pool=avg,bn_target_batches=0,soup_size=0,ordinal_scale=0.0,"
                 "data.resize=bilinear,auc_loss_weight=0.0,model.drop_path_rate=0.0,"
                 "data.brightness=0.0,data.contrast=0.0")

LEVERS = {  # in order of expected effect (the queue runs in this order)
    "base": "",
    "size96": "data.image_size=96",
    "ema": "ema_decay=0.99",
    "rot_shift": "data.rotate_deg=10.0,data.shift=0.0625",
    "label_smooth": "label_smoothing=0.1",
    "lr3e-3": "finetune.lr=3e-3",
    "epochs8": "finetune.epochs=8",
    "no_aug": "data.augment=False",
    "no_warmup": "warmup.epochs=0",
    "lr3e-4": "finetune.lr=3e-4",
    "size128": "data.image_size=128",
}
# Round two: the three single-seed winners of round one (8 epochs +0.0046, lr 3e-3 +0.0028,
# 96 px +0.0023 best validation AUC over base), combined, 3 seeds each, validation only.
ROUND2 = {
    "e8_lr3e-3": "finetune.epochs=8,finetune.lr=3e-3",
    "e8_lr3e-3_96px": "finetune.epochs=8,finetune.lr=3e-3,data.image_size=96",
}

# Round three: one change at a time over configs/bn_only.py (the round-two recipe),
# aimed at regularising the BN+head stage of a small data set.
ROUND3 = {
    "recipe": "",
    "probe150": "warmup.min_steps=150",
    "ema": "ema_decay=0.99",
    "label_smooth": "label_smoothing=0.1",
    "lr1e-3": "finetune.lr=1e-3",
    "rot_shift": "data.rotate_deg=10.0,data.shift=0.0625",
    "lr_warmup": "finetune.warmup_steps=50",
    "lr3e-4": "finetune.lr=3e-4",
}
# Round four: what round three left untried on RetinaMNIST, over configs/bn_only.py: the
# TruncatedTL cut (Peng et al. 2021: the probe on mid-level features), a larger input
# and a stronger head dropout.
ROUND4 = {
    "cut_stage7": "model.truncate_at=stage7",
    "cut_stage6": "model.truncate_at=stage6",
    "cut_stage5": "model.truncate_at=stage5",
    "cut_stage4": "model.truncate_at=stage4",
    "size128": "data.image_size=128",
    "dropout05": "model.dropout_rate=0.5",
}
# Round five: a first screen of levers over the adopted recipe (configs/bn_only.py, cut
# after every stage but the last), where BN+head training now beats the probe.
ROUND5 = {
    "lr1e-3": "finetune.lr=1e-3",
    "lr1e-2": "finetune.lr=1e-2",
    "patience8": "finetune.early_stopping_patience=8",
    "label_smooth": "label_smoothing=0.1",
}
# Round six: round five's lead (BN+head lr 1e-3, still rising at the last step on one seed)
# over 3 seeds, at the recipe's length and with the data-sized minimum doubled.
ROUND6 = {
    "lr1e-3": "finetune.lr=1e-3",
    "lr1e-3_min600": "finetune.lr=1e-3,finetune.min_steps=600",
}
# Round seven: RetinaMNIST's 120 validation images make the best-by-validation choice noisy,
# so two smoothers (an EMA of the trainable weights, alone and with round six's lower lr)
# and the augmentation that had hurt the whole network's probe, now that BN training helps.
ROUND7 = {
    "ema": "ema_decay=0.99",
    "ema_lr1e-3": "ema_decay=0.99,finetune.lr=1e-3",
    "rot_shift": "data.rotate_deg=10.0,data.shift=0.0625",
}
# Round eight: round seven's two gains below the spread (EMA + lr 1e-3: +0.0081; rotations +
# shifts: +0.0053), combined, as round two combined round one's.
ROUND8 = {
    "lr1e-3_rot_shift": "finetune.lr=1e-3,data.rotate_deg=10.0,data.shift=0.0625",
    "ema_lr1e-3_rot_shift":
        "ema_decay=0.99,finetune.lr=1e-3,data.rotate_deg=10.0,data.shift=0.0625",
}
# Round nine: round eight's pair failed PneumoniaMNIST's bound with every run peaking at its
# last step, so the same pair with twice the epochs. The data-sized minimum (300 steps) still
# sets RetinaMNIST's stage (16 epochs of 16 steps < 300), so there it is round eight's run.
ROUND9 = {
    "lr1e-3_rot_shift_e16": ROUND8["lr1e-3_rot_shift"] + ",finetune.epochs=16",
}

# Round ten: the two normalisation levers of the papers jaxbn reproduces, never measured for
# accuracy: BN statistics re-estimated on the target data while training (batch statistics,
# the running ones updated; PyTorch's model.train() default), and AC-Norm (Zhang et al. 2023)
# in the setting of its paper (batch statistics).
ROUND10 = {
    "bn_batch": "bn_stats=batch",
    "acnorm_batch": "model.norm=acnorm,bn_stats=batch",
}
# Round eleven: 5-fold cross-validation of RetinaMNIST train+val (1,200 images, 240 per
# validation fold, instead of the official 120): round nine's recipe against the cut
# recipe it replaced, to see how much of round nine's validation gain survives once the choice
# does not rest on the 120 images every earlier round chose on. Seed 0 ran first (round
# twelve pairs with it); seed 1 after round twelve, for 10 pairs.
ROUND11 = {
    "recipe": "",
    "cut_recipe": "finetune.epochs=8,finetune.lr=3e-3,data.rotate_deg=0.0,data.shift=0.0",
}

# Round twelve: two regularisers for a 1,000-image training set, on round eleven's folds
# (compared fold by fold with round eleven's recipe runs): mixup, and round nine's
# rotations and shifts at twice the strength.
ROUND12 = {
    "mixup": "mixup_alpha=0.2",
    "aug_x2": "data.rotate_deg=20.0,data.shift=0.125",
}

# Round thirteen: on the folds, early stopping (4 passes, 60 steps) ended the recipe's BN stage
# halfway through its 300 steps on two folds of five, while the cosine lr was still half its
# peak; twice the patience lets such a stage reach its low-lr end.
ROUND13 = {
    "patience8": "finetune.early_stopping_patience=8",
}

# Round fourteen: a multi-scale head on the folds. The cut (round four) gained by giving the head
# mid-level features; here the head reads the stage before the cut too (Lite0's stage 5, 112
# channels, beside stage 6's 192: 560 more head weights on 5 classes), and in the second
# variant also the one before that (stage 4, 80 channels).
ROUND14 = {
    "taps_s5": "model.head_taps=stage-2",
    "taps_s4_s5": "model.head_taps=stage-3+stage-2",
}

# Round fifteen: round fourteen's stage-5 tap gained on all 5 folds, +0.0044 ± 0.0014, short of
# that round's +0.005; the same lever with seed 1, paired with round eleven's seed-1 recipe runs.
ROUND15 = {"taps_s5": ROUND14["taps_s5"]}

# Round sixteen: half the batch (32 images), so the same epochs give twice the optimizer steps,
# each with more gradient noise. From here on a lever runs with seeds 0 and 1 on the folds, paired
# with round eleven's recipe runs. The rule, fixed before the runs (27 Nov, 15:45 UTC): over the
# 10 (seed, fold) pairs, a mean paired gain above twice its standard error and higher on at least
# 8 of 10; then PneumoniaMNIST 3-seed validation AUC >= 0.9952, <= 15 min a run, <= 2 % trainable.
ROUND16 = {"batch32": "batch_size=32"}

# Round seventeen: class-balanced cross-entropy (each example's loss x N / (K n_its_class)).
# RetinaMNIST's five grades are unequal (its rarest training class has 66 of 1,080 images), and
# its AUC is the mean over classes, so the rare grades count as much as the common one. Seeds
# 0 and 1 on the folds; the rule is round sixteen's, fixed before the runs (27 Nov, 15:38 UTC).
ROUND17 = {"balanced": "class_weights=balanced"}

# Round eighteen: two levers below the rule, combined, as round eight combined round seven's: the
# stage-5 tap (rounds fourteen and fifteen: +0.0030 ± 0.0014 over both seeds, 7 of 10) and batch
# 32 (round sixteen: +0.0023 ± 0.0020, 7 of 10). Both were chosen on these folds, so they are
# measured again with new runs. Round sixteen's rule, fixed before the runs (27 Nov, 16:06 UTC).
ROUND18 = {"taps_s5_batch32": ROUND14["taps_s5"] + "," + ROUND16["batch32"]}

# Round nineteen: head dropout 0.5 instead of 0.2 on the pooled features. The head of the cut
# network reads 192 features from about 1,000 training images; on the whole network (round four,
# one run) dropout 0.5 was +0.007. Round sixteen's rule, fixed before the runs (27 Nov, 16:41 UTC).
ROUND19 = {"dropout05": "model.dropout_rate=0.5"}

# Round twenty: BN-stage lr 2e-3, between round nine's 1e-3 and the cut recipe's 3e-3 (round
# eleven: the cut recipe, lr 3e-3 over 8 epochs without rotations and shifts, was +0.0054 ±
# 0.0040 over round nine's, on 7 of 10). Round sixteen's rule, fixed before the runs
# (27 Nov, 17:08 UTC).
ROUND20 = {"lr2e-3": "finetune.lr=2e-3"}

# Round twenty-one: round twenty's lr 2e-3 met half the rule (+0.0036 ± 0.0014, 2.6 SE) on 7 of
# 10. Seed 2 on the same folds, for the recipe and the lever, adds 5 pairs. The rule, fixed after
# round twenty and before these runs (27 Nov, 17:51 UTC), keeps round sixteen's proportion: over
# the 15 pairs, a mean gain above twice its SE and at least 12 of 15 that gain (so all 5 new ones).
ROUND21 = {"recipe": "", "lr2e-3": ROUND20["lr2e-3"]}

# Round twenty-two: no head dropout (the recipe keeps the checkpoints' 0.2). Round nineteen's 0.5
# lost on all of its 3 runs, so the other direction. Round sixteen's rule, fixed before the runs
# (27 Nov, 18:42 UTC): over the 10 paired runs, a mean gain above twice its SE, on at least 8.
ROUND22 = {"dropout0": "model.dropout_rate=0.0"}

# Round twenty-three: the head reads each channel's average and its max (`model.pool=avgmax`,
# new: 960 more head weights on RetinaMNIST, 36,133 trainable, 1.53 %), so a feature strong in a
# small part of the fundus is not averaged away. Round sixteen's rule, fixed before the runs
# (27 Nov, 18:53 UTC).
ROUND23 = {"avgmax": "model.pool=avgmax"}

# Round twenty-four: BN-stage lr 3e-3 with round nine's rotations and shifts. On the folds, lr 2e-3
# gained +0.0036 ± 0.0014 (round twenty) and the cut recipe, lr 3e-3 without them, +0.0054 ±
# 0.0040 (round eleven), each on 7 of 10. Round sixteen's rule, fixed before the runs
# (27 Nov, 19:32 UTC).
ROUND24 = {"lr3e-3": "finetune.lr=3e-3"}

# Round twenty-five: round twenty-four's lr 3e-3 gained on 8 of 10 at +0.0049 ± 0.0028 (1.75 SE);
# its two losses were fold 0, where validation AUC fell by 0.045 in the BN stage's first 10 steps
# (0.766 → 0.721 and 0.769 → 0.724; the recipe: −0.001, −0.012). So lr 3e-3 with a 50-step linear
# warm-up of the BN stage's lr (finetune.warmup_steps=50). Round sixteen's rule, fixed before the
# runs (27 Nov, 20:05 UTC).
ROUND25 = {"lr3e-3_warm50": "finetune.lr=3e-3,finetune.warmup_steps=50"}

# Round twenty-six: round twenty-five passed on the folds but not on the test split (its final
# table: RetinaMNIST 0.7571 ± 0.0085, PneumoniaMNIST 0.9781 ± 0.0019; not adopted). AdaBN (new,
# jaxbn.target_stats): every BN layer's running statistics re-estimated on 32 augmented training
# batches before the head stage, then frozen as before. Round sixteen's rule, fixed before the
# runs (27 Nov, 22:30 UTC).
ROUND26 = {"adabn32": "bn_target_batches=32"}

# Round twenty-seven: AdaBN lost (−0.0172 ± 0.0070 on its first 4 runs). A uniform soup (new,
# jaxbn.soup): the final model is the average of the variables of the 5 best validation passes,
# not the single best (the 120-image validation folds make that choice noisy). The training is
# the recipe's, so each run pairs its soup_val_auc with the recipe's best validation AUC (round
# eleven's runs; the run's own best_val_auc must reproduce it). Round sixteen's rule, fixed before
# the runs (28 Nov, 00:17 UTC): over the 10 (seed, fold) runs a mean paired gain above twice its
# standard error, higher on at least 8 of 10; then PneumoniaMNIST 3-seed soup validation AUC
# >= 0.9952, <= 15 min a run, <= 2 % trainable. Stopped once 8 of 10 is out of reach.
ROUND27 = {"soup5": "soup_size=5"}

# Round twenty-eight: the soup lost on 3 of its first 4 runs (−0.0012 ± 0.0008). Soft ordinal
# labels (new, jaxbn.step.ordinal_targets; SORD, Díaz & Marathe 2019): RetinaMNIST's 5 classes are
# grades, so the training target is softmax(−2 (k − y)²) (a neighbouring grade gets 0.11–0.12 of
# it) and the rare grades 3 and 4 borrow from their neighbours. Evaluation is unchanged. Round
# sixteen's rule, fixed before the runs (28 Nov, 00:41 UTC); stopped once 8 of 10 is out of reach.
ROUND28 = {"sord2": "ordinal_scale=2.0"}

# Round twenty-nine: soft ordinal labels lost on 4 of their first 5 runs (−0.0086 ± 0.0058). A
# three times longer head-only stage (warmup.min_steps=150, about 10 epochs of a fold's 960
# images, against 50): the BN stage then starts from a converged linear head, so its updates
# adapt the features rather than make up for an under-trained head. Round sixteen's rule, fixed
# before the runs (28 Nov, 00:57 UTC); stopped once 8 of 10 is out of reach.
ROUND29 = {"head150": "warmup.min_steps=150"}

# Round thirty: the 150-step head stage gained +0.0011 ± 0.0018 on 3 of its first 6 runs. Bicubic
# upsampling (data.resize=bicubic, new): the 28-px images reach 96 px with sharper edges than
# bilinear's, closer to the ImageNet photos the features were learnt on; evaluation resizes the
# same way. Round sixteen's rule, fixed before the runs (28 Nov, 02:01 UTC); stopped once 8 of
# 10 is out of reach.
ROUND30 = {"bicubic": "data.resize=bicubic"}

# Round thirty-one: bicubic upsampling lost (−0.0017 ± 0.0025, 2 of its first 5 runs). AUC
# maximisation (new, jaxbn.step.pairwise_auc_loss; Yuan et al. 2021): the loss adds the batch's
# squared-hinge surrogate of each class's one-vs-rest AUC, margin 1 on the probabilities, weight 1,
# so training optimises the ranking the metric scores and not only the likelihood. Round
# sixteen's rule, fixed before the runs (28 Nov, 03:15 UTC); stopped once 8 of 10 is out of reach.
ROUND31 = {"aucm1": "auc_loss_weight=1.0"}

# Round thirty-two: AUC maximisation lost on its first 3 runs (−0.0013 ± 0.0004). Stochastic depth
# (new, model.drop_path_rate; Huang et al. 2016) at the rate Lite0's checkpoint was trained with,
# 0.2: in training, block i of 16 drops its residual branch with probability 0.2 i / 16, so the BN
# affines are fitted to an ensemble of shallower networks rather than co-adapted to one. Round
# sixteen's rule, fixed before the runs (28 Nov, 03:29 UTC); stopped once 8 of 10 is out of reach.
ROUND32 = {"droppath02": "model.drop_path_rate=0.2"}

# Round thirty-three: stochastic depth gained on 6 of 10 runs (+0.0001 ± 0.0015). Intensity
# augmentation (new, data.brightness and data.contrast; jaxbn.data.augment.random_intensity): each
# training image's contrast scaled by a factor in 1 ± 0.2 about its mean, then its brightness
# shifted by up to ±0.1 of the pixel range, as fundus photographs and X-rays vary in exposure;
# the geometry augmentations stay. Round sixteen's rule, fixed before the runs (28 Nov, 04:07 UTC);
# stopped once 8 of 10 is out of reach.
ROUND33 = {"intensity": "data.brightness=0.1,data.contrast=0.2"}


def _over_bn_only(strategies, common, dataset="retinamnist", seeds="0,1,2", folds=0):
  """A round over configs/bn_only.py, with ``common`` pinning the recipe it measured."""
  return dict(strategies=strategies, base="configs/bn_only.py", common=common, dataset=dataset,
              seeds=seeds, folds=folds)


# preset -> what its runs start from: strategies, base config file ("" = base_config()),
# common overrides, data set and seeds.
PRESETS = {
    "levers": dict(strategies=LEVERS, base="", common=BASE, dataset="pneumoniamnist", seeds="0"),
    "round2": dict(strategies=ROUND2, base="", common=BASE, dataset="pneumoniamnist",
                   seeds="0,1,2"),
    "round3": _over_bn_only(ROUND3, WHOLE_NETWORK, seeds="0,1"),
    "round4": _over_bn_only(ROUND4, WHOLE_NETWORK, seeds="0"),
    "round5": _over_bn_only(ROUND5, CUT_RECIPE, seeds="0"),
    "round6": _over_bn_only(ROUND6, CUT_RECIPE),
    "round7": _over_bn_only(ROUND7, CUT_RECIPE),
    "round8": _over_bn_only(ROUND8, CUT_RECIPE),
    "round9": _over_bn_only(ROUND9, CUT_RECIPE, dataset="pneumoniamnist", seeds="0"),
    "round10": _over_bn_only(ROUND10, ROUND9_RECIPE),
    "round11": _over_bn_only(ROUND11, ROUND9_RECIPE, seeds="0,1", folds=5),
    "round12": _over_bn_only(ROUND12, ROUND9_RECIPE, seeds="0", folds=5),
    "round13": _over_bn_only(ROUND13, ROUND9_RECIPE, seeds="0", folds=5),
    "round14": _over_bn_only(ROUND14, ROUND9_RECIPE, seeds="0", folds=5),
    "round15": _over_bn_only(ROUND15, ROUND9_RECIPE, seeds="1", folds=5),
    "round16": _over_bn_only(ROUND16, ROUND9_RECIPE, seeds="0,1", folds=5),
    "round17": _over_bn_only(ROUND17, ROUND9_RECIPE, seeds="0,1", folds=5),
    "round18": _over_bn_only(ROUND18, ROUND9_RECIPE, seeds="0,1", folds=5),
    "round19": _over_bn_only(ROUND19, ROUND9_RECIPE, seeds="0,1", folds=5),
    "round20": _over_bn_only(ROUND20, ROUND9_RECIPE, seeds="0,1", folds=5),
    "round21": _over_bn_only(ROUND21, ROUND9_RECIPE, seeds="2", folds=5),
    "round22": _over_bn_only(ROUND22, ROUND9_RECIPE, seeds="0,1", folds=5),
    "round23": _over_bn_only(ROUND23, ROUND9_RECIPE, seeds="0,1", folds=5),
    "round24": _over_bn_only(ROUND24, ROUND9_RECIPE, seeds="0,1", folds=5),
    "round25": _over_bn_only(ROUND25, ROUND9_RECIPE, seeds="0,1", folds=5),
    "round26": _over_bn_only(ROUND26, ROUND9_RECIPE, seeds="0,1", folds=5),
    "round27": _over_bn_only(ROUND27, ROUND9_RECIPE, seeds="0,1", folds=5),
    "round28": _over_bn_only(ROUND28, ROUND9_RECIPE, seeds="0,1", folds=5),
    "round29": _over_bn_only(ROUND29, ROUND9_RECIPE, seeds="0,1", folds=5),
    "round30": _over_bn_only(ROUND30, ROUND9_RECIPE, seeds="0,1", folds=5),
    "round31": _over_bn_only(ROUND31, ROUND9_RECIPE, seeds="0,1", folds=5),
    "round32": _over_bn_only(ROUND32, ROUND9_RECIPE, seeds="0,1", folds=5),
    "round33": _over_bn_only(ROUND33, ROUND9_RECIPE, seeds="0,1", folds=5),
}


def get_config(arg=None):
  preset = arg or "levers"
  if preset not in PRESETS:
    raise ValueError(f"Unknown preset {preset!r}: {' | '.join(PRESETS)}.")
  p = PRESETS[preset]
  c = ml_collections.ConfigDict()
  c.name = f"accuracy_{preset}"
  if p["base"]:
    c.base = p["base"]
  c.common = p["common"]
  c.datasets = ml_collections.ConfigDict({
      "pneumoniamnist": {"overrides": "data.name=pneumoniamnist", "budget": {}},
      "retinamnist": {"overrides": "data.name=retinamnist",
                      "budget": {}},
  })
  c.strategies = ml_collections.ConfigDict(p["strategies"])
  c.grid = ml_collections.ConfigDict()
  c.grid.strategies = ",".join(p["strategies"])  # dict order
  c.grid.archs = "efficientnet_lite0"
  c.grid.datasets = p["dataset"]
  c.grid.seeds = p["seeds"]
  c.grid.folds = p.get("folds", 0)  # K-fold cross-validation of train+val; 0 = the val split
  return c
