"""One vocabulary for prefixes of a network: TruncatedTL cuts, weight transfusion, layer-wise FT.

A *prefix* is the stem and the top-level modules after it, in network order,
up to some point; the head (``spec.head``) is never part of one. Three
methods name one:

* TruncatedTL (Peng et al., arXiv:2106.05152, ``model.truncate_at``) keeps
  a prefix, drops the rest and puts global average pooling + a new head on it;
* weight transfusion (Raghu et al., arXiv:1902.07208, ``model.transfer_up_to``)
  copies a prefix from the pretrained weights and keeps the rest random;
* layer-wise fine-tuning (``masks.from_stage(k)``) freezes a prefix and trains
  the rest (:func:`from_stage_prefix` names it).

They all use the names below, resolved by :func:`resolve` against a
:class:`~jaxbn.models.spec.ModelSpec`:

=============== ==================================================================
name            the prefix
=============== ==================================================================
``none``        nothing
``stem``        the stem (stage 0): ResNet ``conv1, bn1``; DenseNet ``conv0, norm0``;
                EfficientNet-Lite ``conv_stem, bn0``; CBR (no stem) its first block.
                ``conv1``, Transfusion's name, is accepted as an alias.
``stageK``      the stem and stages 1..K (``spec.stage_of``), K = 1 .. num_stages − 1;
                ``stage0`` is the stem by ``stage_of`` alone (nothing for CBR)
``stage-K``     counted from the end: every stage but the last K, ``stage{S-K}`` for
                S = num_stages. ``stage-1`` drops the last stage whatever the depth:
                ResNet ``layer3``, DenseNet ``transition3``, EfficientNet-Lite ``stage6``
                (stage 7 ends with ``conv_head``)
a cut name      one of the family's TruncatedTL cuts (``spec.cuts``, :class:`CutPoint`):
                block level ``layer2`` (ResNet), ``transition2`` (DenseNet),
                ``stage7`` (EfficientNet-Lite, its MBConv blocks without
                ``conv_head``); layer level ``layer3_3``, ``blocks_7`` …
``all``         every module but the head
=============== ==================================================================

A block-level cut and the ``stageK`` of the same stage are the same prefix
(ResNet ``layer2`` = ``stage2``, DenseNet ``transition2`` = ``stage2``), so
``truncate_at='stage2'`` and ``transfer_up_to='layer2'`` both work. Every
unknown name raises :class:`PrefixError` (a ``ValueError``) listing the valid
ones for the architecture and the use.

>>> resolve(_DOCTEST_SPEC, "stage1", ["conv1", "bn1", "block1", "block2"])
('conv1', 'bn1', 'block1')
>>> resolve(_DOCTEST_SPEC, "conv1", ["conv1", "bn1", "block1", "block2"])
('conv1', 'bn1')
>>> resolve(_DOCTEST_SPEC, "stage-1", ["conv1", "bn1", "block1", "block2"])
('conv1', 'bn1', 'block1')
>>> from_stage_prefix(0), from_stage_prefix(1), from_stage_prefix(3), from_stage_prefix(5, 3)
('none', 'stage0', 'stage2', 'all')
"""

from __future__ import annotations

import dataclasses
import re
import types
from typing import Any, Iterable, Sequence

NONE = "none"
STEM = "stem"
ALL = "all"
# Older spellings that keep working: Transfusion's "conv1" is the stem.
ALIASES = {"conv1": STEM}
_STAGE = re.compile(r"stage(-?\d+)")


class PrefixError(ValueError):
  """An unknown prefix name (the message lists the valid ones)."""


@dataclasses.dataclass(frozen=True)
class CutPoint:
  """One place where a backbone can be cut (TruncatedTL, ``truncate_at=name``).

  The truncated model keeps the top-level modules ``kept`` (in network order;
  the stem first), drops everything after them and ends with global average
  pooling + the family's head (``spec.head``, a new dense layer).

  Attributes:
    name: what ``truncate_at`` takes, e.g. ``"layer3"``, ``"layer3_3"``,
      ``"transition2"``, ``"stage4"``, ``"blocks_7"``.
    level: ``"block"`` (after a stage: the coarse search) or ``"layer"``
      (after one residual / MBConv block: the fine search).
    kept: the top-level modules of the truncated model, head excluded. Two
      cuts with the same ``kept`` (``layer3`` and ``layer3_5`` of ResNet-50)
      build the same model.
  """

  name: str
  level: str
  kept: tuple[str, ...]

  @property
  def last(self) -> str:
    """The last kept top-level module: the truncated model ends right after it."""
    return self.kept[-1]


def _cut_listing(cuts: Sequence[CutPoint]) -> str:
  block = ", ".join(c.name for c in cuts if c.level == "block")
  layer = ", ".join(c.name for c in cuts if c.level == "layer") or "(none)"
  return f"block level {block}; layer level {layer}"


def find_cut(cuts: Iterable[CutPoint], truncate_at: str | None, what: str) -> CutPoint | None:
  """Resolves the cut name ``truncate_at`` among ``cuts`` (None: not truncated).

  Raises :class:`PrefixError` naming every valid cut, block level first.
  """
  if truncate_at is None:
    return None
  cuts = tuple(cuts)
  for cut in cuts:
    if cut.name == truncate_at:
      return cut
  raise PrefixError(
      f"Unknown truncate_at={truncate_at!r} for {what}; valid cuts: {_cut_listing(cuts)}; "
      "or None for the full model."
  )


def find_taps(cuts: Iterable[CutPoint], names: Sequence[str], cut: CutPoint | None,
              what: str) -> frozenset[str]:
  """The modules after which a multi-scale head reads features (``head_taps``).

  Each of ``names`` is a cut name of ``cuts``; its output is taken after the module
  ``CutPoint.last``, so it must lie strictly inside the model that ``cut`` keeps
  (None: the whole network). Raises :class:`PrefixError` otherwise.
  """
  cuts = tuple(cuts)
  taps = [find_cut(cuts, name, what) for name in names]
  for tap in taps:
    if cut is not None and not set(tap.kept) < set(cut.kept):
      raise PrefixError(f"head tap {tap.name!r} is not before the cut {cut.name!r} of {what}: "
                        "a tap must end inside the kept network.")
  return frozenset(tap.last for tap in taps)


def canonical(name: str) -> str:
  """``name`` with old spellings replaced (``conv1`` → ``stem``)."""
  return ALIASES.get(name, name)


def stage_names(spec: Any) -> list[str]:
  """``stage1`` … ``stage{S-1}`` of ``spec`` (stage S ends at ``all``)."""
  return [f"stage{k}" for k in range(1, spec.num_stages)]


def _cuts(spec: Any) -> tuple[CutPoint, ...]:
  return tuple(spec.cuts()) if spec.cuts is not None else ()


def _stage_k(name: str, spec: Any) -> int | None:
  """K of ``stageK`` (``stage-K`` is ``stage{S-K}``), None for another or out-of-range name."""
  match = _STAGE.fullmatch(name)
  if not match:
    return None
  k = int(match.group(1))
  k = k + spec.num_stages if match.group(1).startswith("-") else k
  return k if 0 <= k < spec.num_stages else None


def names(spec: Any) -> list[str]:
  """Every prefix name of ``spec``: none, stem, stage1.., all, then the family's cuts."""
  cuts = [c.name for c in _cuts(spec)]
  coarse = [NONE, STEM, "stage0", *stage_names(spec), ALL]
  return coarse + [c for c in cuts if c not in coarse]


def resolve(spec: Any, name: str, modules: Sequence[str]) -> tuple[str, ...]:
  """The modules among ``modules`` (a model's top-level names) in the prefix ``name``.

  The head (``spec.head``) is never included; order follows ``modules``.
  Raises :class:`PrefixError` for an unknown name.
  """
  name = canonical(name)
  body = [m for m in modules if m != spec.head]
  if name == NONE:
    return ()
  if name == ALL:
    return tuple(body)
  for cut in _cuts(spec):
    if cut.name == name:
      return tuple(m for m in body if m in cut.kept)
  k = 0 if name == STEM else _stage_k(name, spec)
  if k is None:
    raise PrefixError(f"Unknown prefix {name!r} for {spec.name}; valid: {', '.join(names(spec))}.")
  if spec.stage_of is None:
    raise PrefixError(f"{spec.name!r} has no stage_of: prefix {name!r} is not defined for it.")
  stages = {m: spec.stage_of(m) for m in body}
  if name == STEM:
    first = min(stages.values(), default=0)  # 0 for a stem; CBR has none: its first block
    return tuple(m for m in body if stages[m] == first)
  return tuple(m for m in body if stages[m] <= k)


def truncation_cut(spec: Any, name: str | None) -> CutPoint | None:
  """The TruncatedTL :class:`CutPoint` for the prefix ``name`` (None: the full model).

  Cut names are looked up directly; ``stem`` and ``stageK`` map to the cut
  that keeps the same modules (ResNet ``stage2`` → ``layer2``).
  """
  if name is None:
    return None
  if spec.cuts is None:
    raise PrefixError(f"{spec.name!r} ({spec.family}) does not support truncate_at.")
  cuts = _cuts(spec)
  wanted = canonical(name)
  for cut in cuts:
    if cut.name == wanted:
      return cut
  if spec.stage_of is not None and (wanted == STEM or _stage_k(wanted, spec) is not None):
    modules = list(dict.fromkeys(m for c in cuts for m in c.kept))
    kept = resolve(spec, wanted, modules)
    for cut in cuts:
      if cut.kept == kept:
        return cut
  return find_cut(cuts, name, spec.name)  # raises, listing the cuts


def from_stage_prefix(k: int, num_stages: int | None = None) -> str:
  """The prefix that ``masks.from_stage(k)`` freezes: every stage below ``k``.

  ``k = 0`` freezes nothing, ``k`` the stages 0..k−1 (``stage{k-1}``); with
  ``num_stages`` given, ``k > num_stages`` freezes ``all`` (only the head trains).
  """
  if k < 0:
    raise PrefixError(f"from_stage({k}): k must be >= 0.")
  if num_stages is not None and k > num_stages:
    return ALL
  return NONE if k == 0 else f"stage{k - 1}"


# A minimal spec for the module docstring's examples.
_DOCTEST_SPEC = types.SimpleNamespace(
    name="toy", family="toy", head="fc", num_stages=2, cuts=None,
    stage_of={"conv1": 0, "bn1": 0, "block1": 1, "block2": 2, "fc": 3}.__getitem__,
)

__all__ = ["ALIASES", "ALL", "CutPoint", "NONE", "PrefixError", "STEM", "canonical", "find_cut",
           "from_stage_prefix", "names", "resolve", "stage_names", "truncation_cut"]
