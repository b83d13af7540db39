"""Which parameters train: optax label trees for BN-only transfer learning.

A *strategy* names the parameters that train; everything else is frozen.
:func:`make_labels` turns a strategy into a label tree (``'trainable'`` /
``'frozen'`` leaves, same containers as ``params``) and :func:`make_optimizer`
turns that tree into one ``optax`` transformation. Three lines in any Flax
training loop (the model need not come from jaxbn)::

    labels = jaxbn.masks.make_labels(params, "bn+head", batch_stats=batch_stats)
    tx = jaxbn.masks.make_optimizer(optax.adam(1e-3), labels)
    opt_state = tx.init(params)          # moments for BN scale/bias + head only

or, equivalently, ``tx, labels = jaxbn.masks.build(params, "bn+head", optax.adam(1e-3),
batch_stats=batch_stats)``. The rest of the loop is unchanged: compute gradients
for all of ``params``, call ``tx.update`` and ``optax.apply_updates``. Frozen
leaves get exactly zero updates, hold no optimizer state (so e.g. ``adamw``'s
weight decay never touches them), and since their gradients are unused XLA
drops the weight-gradient computations for them under ``jit``.

Strategies (combine terms with ``+``; the union trains):

=================  ============================================================
``full``           every parameter
``bn``             ``scale`` and ``bias`` of every BatchNorm layer
``bn_scale``       BatchNorm ``scale`` (γ) only
``bn_bias``        BatchNorm ``bias`` (β) only
``head``           the classifier (a linear probe)
``bn+head``        partial transfusion (Kanavati & Tsuneki, 2021): BN γ, β + head
``from_stage(k)``  every top-level module with ``stage_of(name) >= k``; jaxbn's
                   registry puts the head at ``num_stages + 1``, so it is
                   included (layer-wise fine-tuning)
``regex:<pat>``    leaves whose ``'/'``-joined path (``'layer4_0/bn1/scale'``)
                   fully matches ``<pat>``; must be the last term, the rest of
                   the string is the pattern (it may contain ``+`` and ``|``)
=================  ============================================================

The same selectors exist as Python objects that combine with ``+``/``|``
(union), ``&`` (intersection) and ``-`` (difference):
``masks.regex(r"layer4_.*") + "head"``, ``masks.from_stage(3)``. A selector is a
``(path, leaf) -> bool`` predicate over the parameters: :func:`where` wraps your
own (``where(lambda path, leaf: leaf.ndim == 4) + "bn"``; a plain callable is
accepted wherever a strategy is), and :meth:`Selector.predicate` resolves a
built-in one on a params tree.

**Flax NNX.** ``nnx_filter(model, "bn+head")`` gives an NNX filter for
``nnx.Optimizer(model, tx, wrt=f)`` and ``nnx.grad(loss, argnums=nnx.DiffState(0,
f))`` (see :mod:`jaxbn.nnx`), and the three lines above work unchanged with
``params, batch_stats = nnx.state(model, nnx.Param), nnx.state(model,
nnx.BatchStat)`` and ``nnx.Optimizer(model, tx, wrt=nnx.Param)``: label trees
are matched to the parameters by path (:func:`align_labels`). NNX is imported
only by :func:`nnx_filter`.

**How BatchNorm is found.** Structurally, never by name: a params module is a
BatchNorm when the module at the same path in ``batch_stats`` owns ``mean`` and
``var`` and the module's ``scale``/``bias`` params have exactly their shape
(:func:`is_batchnorm`). So a ``LayerNorm`` (no statistics) is never taken for
one, whatever the modules are called. This needs ``batch_stats``; without it the
BN strategies raise. For norms without running statistics (GroupNorm, a custom
layer) pass ``is_norm=`` — any predicate, or :func:`norm_by_name` to opt in to
name matching explicitly. Only leaves named ``scale`` and ``bias`` of a norm
module are selected.

**How the head is found.** ``head=`` names it: a top-level module (``'fc'``), a
``'/'``-joined module path, or a regex fully matching leaf paths (``'head/.*'``).
Otherwise, with ``arch=`` (a jaxbn model name) the registry's ``spec.head`` is
used. Otherwise the head is the top-level params module that directly holds a
2-D ``kernel`` (a ``Dense``); if there is none, or more than one, the call
raises and asks for ``head=``. (The candidates are not ranked by position:
``jit``, ``eval_shape`` and checkpoint restoring sort dict keys, so dict order
does not reliably follow definition order.)

**Freezing parameters does not freeze BatchNorm statistics.** Labels only decide
which *parameters* the optimizer moves. Whether BN normalises with batch
statistics (and updates ``mean``/``var``) or with the frozen running statistics
is chosen by how the model is applied: Flax's ``nn.BatchNorm(
use_running_average=...)``; for jaxbn models ``model.apply(variables, x,
train=True, use_running_average=True, rngs=...)`` gives dropout with frozen
statistics (the paper's setting, and the better one under domain shift), while
``model.apply(variables, x, train=True, mutable=['batch_stats'])`` uses and
updates batch statistics (the paper's ``*_bma`` modes). The caller must choose.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
import sys
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

import jax
import optax

TRAINABLE = "trainable"
FROZEN = "frozen"

# A leaf's position in a params tree: its dict keys, e.g. ('layer1_0', 'bn1', 'scale').
Path = tuple[str, ...]
# is_norm(module_path, module_params, module_stats_or_None) -> bool; the two mappings
# hold the module's *direct* leaves (name -> array or ShapeDtypeStruct).
NormPredicate = Callable[[Path, Mapping[str, Any], Union[Mapping[str, Any], None]], bool]

# (path, leaf) -> bool: the public form of a selection rule (see :func:`where`).
LeafPredicate = Callable[[Path, Any], bool]


# --------------------------------------------------------------------------- #
# Norm detection.
# --------------------------------------------------------------------------- #


def is_batchnorm(
    path: Path, module_params: Mapping[str, Any], module_stats: Mapping[str, Any] | None
) -> bool:
  """The default, structural BatchNorm rule (the name ``path`` is not looked at).

  True when ``module_stats`` holds ``mean`` and ``var`` of one shape and the
  module's ``scale`` and/or ``bias`` params have that same shape (``(C,)``;
  stacked ``(L, C)`` for a scanned BN, whose statistics are stacked too).

  >>> import numpy as np
  >>> stats = {"mean": np.zeros(8), "var": np.ones(8)}
  >>> is_batchnorm(("bn1",), {"scale": np.ones(8), "bias": np.zeros(8)}, stats)
  True
  >>> is_batchnorm(("LayerNorm_0",), {"scale": np.ones(8), "bias": np.zeros(8)}, None)
  False
  """
  del path  # Structural: names do not matter.
  if not module_stats or "mean" not in module_stats or "var" not in module_stats:
    return False
  shape = tuple(module_stats["mean"].shape)
  if not shape or tuple(module_stats["var"].shape) != shape:
    return False
  affine = [module_params[k] for k in ("scale", "bias") if k in module_params]
  return bool(affine) and all(tuple(a.shape) == shape for a in affine)


def norm_by_name(*patterns: str) -> NormPredicate:
  """An opt-in predicate: modules whose ``'/'``-joined path fully matches a pattern.

  For norms that keep no ``batch_stats`` (GroupNorm, LayerNorm, custom layers)
  or when ``batch_stats`` is not at hand. Combine with the structural rule when
  a network has both kinds.

  >>> is_norm = norm_by_name(r"(.*/)?GroupNorm_\\d+")
  >>> is_norm(("block1", "GroupNorm_0"), {}, None), is_norm(("Conv_0",), {}, None)
  (True, False)
  >>> both = lambda *a: is_batchnorm(*a) or is_norm(*a)
  """
  if not patterns:
    raise ValueError("norm_by_name needs at least one pattern.")
  compiled = [re.compile(p) for p in patterns]

  def predicate(path, module_params, module_stats):
    del module_params, module_stats
    name = "/".join(path)
    return any(c.fullmatch(name) for c in compiled)

  return predicate


# --------------------------------------------------------------------------- #
# The context a selector sees: the params tree, flattened once.
# --------------------------------------------------------------------------- #


def _key_name(key: Any) -> str | None:
  """Dict key / list index as a string; ``None`` for attribute keys (boxed leaves)."""
  if isinstance(key, jax.tree_util.DictKey):
    return str(key.key)
  if isinstance(key, jax.tree_util.SequenceKey):
    return str(key.idx)
  if isinstance(key, jax.tree_util.FlattenedIndexKey):
    return str(key.key)
  return None  # GetAttrKey, e.g. the `.value` of an nn.Partitioned box.


def _nnx_variable_type() -> type | None:
  """``flax.nnx.Variable`` if NNX is already imported (an NNX tree cannot exist otherwise)."""
  nnx = sys.modules.get("flax.nnx")
  return getattr(nnx, "Variable", None)


def _flatten(tree: Any) -> tuple[list[Path], list[Any], Any]:
  """(string paths, leaves, treedef); an NNX ``Variable`` is one leaf (its value).

  So an ``nnx.State`` of ``Param`` s flattens like the pure dict of its arrays,
  and a tree unflattened from the treedef holds plain values where the
  variables were (the structure ``nnx.Optimizer`` hands to optax).
  """
  variable = _nnx_variable_type()
  is_leaf = (lambda x: isinstance(x, variable)) if variable is not None else None
  keyed, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  paths = [tuple(n for n in map(_key_name, kp) if n is not None) for kp, _ in keyed]
  leaves = [leaf.get_value() if is_leaf and is_leaf(leaf) else leaf for _, leaf in keyed]
  return paths, leaves, treedef


def _by_module(paths: Iterable[Path], leaves: Iterable[Any]) -> dict[Path, dict[str, Any]]:
  modules: dict[Path, dict[str, Any]] = collections.defaultdict(dict)
  for path, leaf in zip(paths, leaves):
    if path:
      modules[path[:-1]][path[-1]] = leaf
  return dict(modules)


def _hint(params_top: Sequence[str]) -> str:
  if "params" in params_top or "batch_stats" in params_top:
    return " (Pass variables['params'] and variables['batch_stats'], not the whole variables dict.)"
  return ""


class _Context:
  """The params tree flattened once, plus what selectors resolve lazily (norms, head, stages)."""

  def __init__(self, params, *, batch_stats, arch, head, stage_of, is_norm):
    self.paths, self.leaves, self.treedef = _flatten(params)
    self.top = list(dict.fromkeys(p[0] for p in self.paths if p))
    self.batch_stats = batch_stats
    self.arch = arch
    self._head = head
    self._stage_of = stage_of
    self._is_norm = is_norm
    self._norm_roles: dict[Path, str] | None = None
    self.norm_modules: list[Path] = []  # filled by norm_roles()

  def spec(self):
    from jaxbn.models import registry  # Lazy: masks works without jaxbn models.

    return registry.get_spec(self.arch)

  def norm_roles(self) -> dict[Path, str]:
    """Maps each norm ``scale``/``bias`` leaf path to ``'scale'`` or ``'bias'``."""
    if self._norm_roles is not None:
      return self._norm_roles
    is_norm = self._is_norm
    if is_norm is None:
      if self.batch_stats is None:
        raise ValueError(
            "BN strategies find BatchNorm layers structurally and need batch_stats: "
            "call make_labels(params, ..., batch_stats=variables['batch_stats']). "
            "For norms without running statistics, or to match by module name "
            "instead, pass is_norm=jaxbn.masks.norm_by_name(<regex>) (or any "
            "predicate)."
        )
      is_norm = is_batchnorm
    stats_tree = {} if self.batch_stats is None else self.batch_stats
    stats_paths, stats_leaves, _ = _flatten(stats_tree)
    stats = _by_module(stats_paths, stats_leaves)
    roles, self.norm_modules = {}, []
    for module, leaves in _by_module(self.paths, self.leaves).items():
      if is_norm(module, leaves, stats.get(module)):
        self.norm_modules.append(module)
        roles.update({module + (k,): k for k in ("scale", "bias") if k in leaves})
    self._norm_roles = roles
    return roles

  def head_paths(self) -> set[Path]:
    head, source = self._head, "head="
    if head is None and self.arch is not None:
      head, source = self.spec().head, f"the registry spec of arch={self.arch!r}"
    if head is None:
      return self._detect_head()
    parts = tuple(head.split("/"))
    under = {p for p in self.paths if p[: len(parts)] == parts}
    if under:
      return under
    try:
      pattern = re.compile(head)
    except re.error:
      pattern = None
    matched = {p for p in self.paths if pattern and pattern.fullmatch("/".join(p))}
    if matched:
      return matched
    raise ValueError(
        f"Head {head!r} (from {source}) is neither a module path nor a regex matching "
        f"any parameter path. Top-level modules: {', '.join(self.top)}.{_hint(self.top)}"
    )

  def _detect_head(self) -> set[Path]:
    candidates = list(
        dict.fromkeys(
            p[0]
            for p, leaf in zip(self.paths, self.leaves)
            if len(p) == 2 and p[1] == "kernel" and len(leaf.shape) == 2
        )
    )
    if len(candidates) != 1:
      found = (
          "no top-level module holds a 2-D 'kernel'"
          if not candidates
          else f"several top-level modules hold a 2-D 'kernel': {', '.join(candidates)}"
      )
      raise ValueError(
          f"Cannot find the classifier head: {found}. Pass head='<module name>' (or a "
          f"path regex), or arch= for a jaxbn model. Top-level modules: "
          f"{', '.join(self.top)}.{_hint(self.top)}"
      )
    return {p for p in self.paths if p[0] == candidates[0]}

  def stage_of(self) -> Callable[[str], int]:
    if self._stage_of is not None:
      return self._stage_of
    if self.arch is not None and self.spec().stage_of is not None:
      return self.spec().stage_of
    raise ValueError(
        "from_stage(k) needs stage_of= (a callable: top-level module name -> stage "
        "index, head last) or arch= naming a jaxbn model whose spec defines stage_of."
    )


# --------------------------------------------------------------------------- #
# Selectors: named sets of leaves that add up.
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Selector:
  """A named rule picking the trainable leaves.

  ``a + b`` (or ``a | b``) trains the union, ``a & b`` the intersection and
  ``a - b`` what ``a`` selects but ``b`` does not. Strings are parsed and plain
  ``(path, leaf) -> bool`` callables wrapped with :func:`where` when combined:
  ``from_stage(3) + "bn"``, ``parse_strategy("bn") - where(lambda p, x: p[0] == "bn0")``.
  Build them with :func:`parse_strategy`, :func:`regex`, :func:`from_stage` or
  :func:`where`; :meth:`predicate` turns one into a ``(path, leaf) -> bool``
  predicate for a given params tree.
  """

  name: str
  select: Callable[[_Context], set[Path]] = dataclasses.field(repr=False, compare=False)

  def _combine(self, other: Any, op: str, fn: Callable[[set, set], set]) -> "Selector":
    other = _as_selector(other)
    return Selector(f"{self.name}{op}{other.name}",
                    lambda ctx: fn(self.select(ctx), other.select(ctx)))

  def __add__(self, other: Any) -> "Selector":
    return self._combine(other, "+", set.__or__)

  __or__ = __add__

  def __and__(self, other: Any) -> "Selector":
    return self._combine(other, "&", set.__and__)

  def __sub__(self, other: Any) -> "Selector":
    return self._combine(other, "-", set.__sub__)

  def __radd__(self, other: Any) -> "Selector":
    return _as_selector(other) + self

  __ror__ = __radd__

  def __rand__(self, other: Any) -> "Selector":
    return _as_selector(other) & self

  def __rsub__(self, other: Any) -> "Selector":
    return _as_selector(other) - self

  def predicate(self, params: Any, **context: Any) -> LeafPredicate:
    """This rule resolved on ``params``: a ``(path, leaf) -> bool`` predicate.

    ``context``: the keyword arguments of :func:`make_labels` (``batch_stats``,
    ``arch``, ``head``, ``stage_of``, ``is_norm``). ``path`` is a tuple of
    strings (list indices as ``'0'``); the leaf is not looked at.

    >>> import numpy as np
    >>> params = {"conv": {"kernel": np.zeros((3, 3, 1, 2))}, "fc": {"kernel": np.zeros((2, 2))}}
    >>> is_head = parse_strategy("head").predicate(params)
    >>> is_head(("fc", "kernel"), None), is_head(("conv", "kernel"), None)
    (True, False)
    """
    chosen = frozenset(self.select(_Context(params, **_context_kwargs(context))))
    return lambda path, leaf=None: tuple(map(str, path)) in chosen


def _context_kwargs(context: Mapping[str, Any]) -> dict[str, Any]:
  keys = ("batch_stats", "arch", "head", "stage_of", "is_norm")
  unknown = set(context) - set(keys)
  if unknown:
    raise TypeError(f"Unknown keyword(s) {sorted(unknown)}; expected some of {keys}.")
  return {k: context.get(k) for k in keys}


def where(predicate: LeafPredicate, name: str | None = None) -> Selector:
  """Trains the leaves for which ``predicate(path, leaf)`` is true.

  ``path`` is the leaf's position as a tuple of strings (``('layer4_0',
  'conv1', 'kernel')``; list indices as ``'0'``), ``leaf`` its array (or
  ``jax.ShapeDtypeStruct``). The predicate must select at least one parameter.
  Combine with the named strategies: ``where(is_depthwise) + "bn"``; a plain
  callable given as a strategy is wrapped the same way.

  >>> import numpy as np
  >>> params = {"conv": {"kernel": np.zeros((3, 3, 1, 4)), "bias": np.zeros(4)},
  ...           "fc": {"kernel": np.zeros((4, 2)), "bias": np.zeros(2)}}
  >>> biases = where(lambda path, leaf: path[-1] == "bias", name="biases")
  >>> make_labels(params, biases + "head")["conv"]
  {'bias': 'trainable', 'kernel': 'frozen'}
  >>> make_labels(params, parse_strategy("full") - biases)["fc"]
  {'bias': 'frozen', 'kernel': 'trainable'}
  """
  if not callable(predicate):
    raise TypeError(f"where() needs a callable (path, leaf) -> bool, got {predicate!r}.")
  label = name or getattr(predicate, "__name__", "predicate")

  def select(ctx: _Context) -> set[Path]:
    chosen = {p for p, leaf in zip(ctx.paths, ctx.leaves) if predicate(p, leaf)}
    examples = ", ".join("/".join(p) for p in ctx.paths[:3])
    return _nonempty(f"where({label})", chosen, f"the predicate is false for every "
                     f"leaf; paths look like {examples}.")

  return Selector(f"where({label})", select)


def _nonempty(name: str, chosen: set[Path], why: str) -> set[Path]:
  if not chosen:
    raise ValueError(f"Strategy term {name!r} selects no parameter: {why}")
  return chosen


def _norm_selector(name: str, roles: tuple[str, ...]) -> Selector:
  def select(ctx: _Context) -> set[Path]:
    chosen = {p for p, role in ctx.norm_roles().items() if role in roles}
    if not chosen and ctx.norm_modules:
      found = ", ".join("/".join(m) for m in ctx.norm_modules[:4])
      more = f" and {len(ctx.norm_modules) - 4} more" if len(ctx.norm_modules) > 4 else ""
      missing = " or ".join(repr(r) for r in roles)
      raise ValueError(
          f"Strategy term {name!r} selects no parameter: {len(ctx.norm_modules)} norm "
          f"layer(s) were found ({found}{more}) but none has a {missing} parameter "
          f"(built with use_scale=False / use_bias=False?). Choose another term, e.g. "
          f"'bn' for whatever affine they have."
      )
    why = (
        "no norm layer found (BatchNorm = a params module with scale/bias shaped "
        "like the mean/var its batch_stats path owns). Check that batch_stats is "
        f"variables['batch_stats']; batch_stats top level: "
        f"{', '.join(map(str, list(ctx.batch_stats or {})[:8])) or '(empty)'}."
    )
    return _nonempty(name, chosen, why)

  return Selector(name, select)


_NAMED: dict[str, Selector] = {
    "full": Selector("full", lambda ctx: set(ctx.paths)),
    "bn": _norm_selector("bn", ("scale", "bias")),
    "bn_scale": _norm_selector("bn_scale", ("scale",)),
    "bn_bias": _norm_selector("bn_bias", ("bias",)),
    "head": Selector("head", lambda ctx: ctx.head_paths()),
}
STRATEGIES = (*_NAMED, "from_stage(<k>)", "regex:<pattern>")
_FROM_STAGE = re.compile(r"from_stage\(\s*(-?\d+)\s*\)")


def regex(*patterns: str) -> Selector:
  """Trains leaves whose ``'/'``-joined path fully matches any pattern (big_vision style).

  Each pattern must match at least one parameter (a typo raises rather than
  silently freezing everything).

  >>> import numpy as np
  >>> params = {"enc": {"kernel": np.zeros((3, 3))}, "fc": {"kernel": np.zeros((3, 2))}}
  >>> make_labels(params, regex(r"fc/.*"))
  {'enc': {'kernel': 'frozen'}, 'fc': {'kernel': 'trainable'}}
  >>> make_labels(params, "regex:enc/.*|fc/kernel")["fc"]
  {'kernel': 'trainable'}
  """
  if not patterns:
    raise ValueError("regex() needs at least one pattern.")
  compiled = [re.compile(p) for p in patterns]

  def select(ctx: _Context) -> set[Path]:
    chosen = set()
    for pattern in compiled:
      hits = {p for p in ctx.paths if pattern.fullmatch("/".join(p))}
      examples = ", ".join("/".join(p) for p in ctx.paths[:3])
      why = f"no path fully matches; paths look like {examples}."
      _nonempty(f"regex:{pattern.pattern}", hits, why)
      chosen |= hits
    return chosen

  return Selector("regex:" + "|".join(patterns), select)


def from_stage(k: int) -> Selector:
  """Trains every top-level module whose stage is ``>= k`` (layer-wise fine-tuning).

  The stage of a top-level module name comes from ``stage_of=`` or, given
  ``arch=``, from the jaxbn registry (stem 0, stages 1..S, head S + 1, so the
  head always trains). ``from_stage(0)`` equals ``full``.

  >>> import numpy as np
  >>> params = {"stem": {"kernel": np.zeros((3, 3, 3, 8))},
  ...           "block1": {"kernel": np.zeros((3, 3, 8, 8))},
  ...           "fc": {"kernel": np.zeros((8, 2))}}
  >>> stage = {"stem": 0, "block1": 1, "fc": 2}.__getitem__
  >>> make_labels(params, "from_stage(1)", stage_of=stage)["stem"]
  {'kernel': 'frozen'}
  """
  k = int(k)

  def select(ctx: _Context) -> set[Path]:
    stage_of = ctx.stage_of()
    keep = {name for name in ctx.top if stage_of(name) >= k}
    return _nonempty(
        f"from_stage({k})",
        {p for p in ctx.paths if p and p[0] in keep},
        f"no top-level module has stage >= {k}.",
    )

  return Selector(f"from_stage({k})", select)


def parse_strategy(strategy: str) -> Selector:
  """Parses ``'bn+head'``, ``'from_stage(3)'``, ``'bn_scale+regex:fc/.*'`` ...

  Useful to validate a config before any parameter exists.

  >>> parse_strategy("bn+head").name
  'bn+head'
  >>> parse_strategy("bn+fc")  # doctest: +ELLIPSIS
  Traceback (most recent call last):
  ...
  ValueError: Unknown strategy term 'fc' in 'bn+fc'; valid: full, bn, bn_scale, bn_bias, head, ...
  """
  rest, terms = strategy.strip(), []
  while True:
    if rest.startswith("regex:"):
      terms.append(regex(rest[len("regex:") :]))
      break
    term, plus, rest = rest.partition("+")
    term = term.strip()
    match = _FROM_STAGE.fullmatch(term)
    if term in _NAMED:
      terms.append(_NAMED[term])
    elif match:
      terms.append(from_stage(int(match.group(1))))
    else:
      raise ValueError(
          f"Unknown strategy term {term!r} in {strategy!r}; valid: {', '.join(STRATEGIES)}; "
          "combine with '+', e.g. 'bn+head'."
      )
    if not plus:
      break
    rest = rest.strip()
  selector = terms[0]
  for term in terms[1:]:
    selector = selector + term
  return selector


def _as_selector(strategy: "str | Selector | Sequence[str | Selector]") -> Selector:
  if isinstance(strategy, Selector):
    return strategy
  if isinstance(strategy, str):
    return parse_strategy(strategy)
  if callable(strategy):
    return where(strategy)
  if isinstance(strategy, Sequence) and strategy:
    selectors = [_as_selector(s) for s in strategy]
    out = selectors[0]
    for s in selectors[1:]:
      out = out + s
    return out
  raise TypeError(
      "strategy must be a string, a Selector, a (path, leaf) -> bool callable or a "
      f"non-empty list of them; got {strategy!r}."
  )


# --------------------------------------------------------------------------- #
# Public API.
# --------------------------------------------------------------------------- #


def make_labels(
    params: Any,
    strategy: "str | Selector | Sequence[str | Selector]",
    *,
    batch_stats: Any = None,
    arch: str | None = None,
    head: str | None = None,
    stage_of: Callable[[str], int] | None = None,
    is_norm: NormPredicate | None = None,
) -> Any:
  """Label tree (``'trainable'`` / ``'frozen'``) for ``optax.partition``.

  Args:
    params: ``variables['params']``: arrays or ``jax.ShapeDtypeStruct`` (from
      ``jax.eval_shape``), in dicts or ``FrozenDict`` s.
    strategy: e.g. ``'bn+head'``, ``'from_stage(3)'``, ``'regex:layer4_.*'``, a
      :class:`Selector`, or a list of these (their union trains).
    batch_stats: ``variables['batch_stats']``; needed by the ``bn*`` strategies
      (unless ``is_norm`` is given).
    arch: a jaxbn model name; supplies the default ``head`` and ``stage_of``.
    head: classifier module name, ``'/'``-joined module path or path regex.
    stage_of: top-level module name -> stage, for ``from_stage``.
    is_norm: replaces the structural BatchNorm rule (:func:`is_batchnorm`), see
      :func:`norm_by_name`.

  Returns:
    A tree with ``params``' structure and container types whose leaves are
    ``TRAINABLE`` or ``FROZEN``.

  Raises:
    ValueError: unknown strategy; a term that selects nothing; BN strategy
      without ``batch_stats``/``is_norm``; head or ``stage_of`` not found.

  >>> import jax, jax.numpy as jnp, flax.linen as nn
  >>> class Net(nn.Module):
  ...   @nn.compact
  ...   def __call__(self, x):
  ...     x = nn.BatchNorm(use_running_average=True)(nn.Conv(4, (3, 3))(x))
  ...     return nn.Dense(2)(x.mean((1, 2)))
  >>> variables = jax.eval_shape(Net().init, jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  >>> labels = make_labels(variables["params"], "bn+head",
  ...                      batch_stats=variables["batch_stats"])
  >>> labels["BatchNorm_0"], labels["Conv_0"]["kernel"], labels["Dense_0"]["kernel"]
  ({'bias': 'trainable', 'scale': 'trainable'}, 'frozen', 'trainable')
  """
  selector = _as_selector(strategy)
  ctx = _Context(
      params, batch_stats=batch_stats, arch=arch, head=head, stage_of=stage_of, is_norm=is_norm
  )
  chosen = selector.select(ctx)
  _nonempty(selector.name, chosen, "the terms' intersection / difference is empty.")
  return ctx.treedef.unflatten([TRAINABLE if p in chosen else FROZEN for p in ctx.paths])


# --------------------------------------------------------------------------- #
# Flax NNX (flax.nnx is imported only when these are used).
# --------------------------------------------------------------------------- #




@dataclasses.dataclass(frozen=True)
class NNXFilter:
  """An NNX filter: true for the ``nnx.Param`` s at ``paths`` (string tuples).

  Hashable and comparable, so it can be a static argument of ``nnx.jit`` and
  the ``wrt`` of ``nnx.Optimizer`` and ``nnx.DiffState``.
  """

  name: str
  paths: frozenset = dataclasses.field(repr=False)

  def __call__(self, path: tuple, x: Any) -> bool:
    from flax import nnx

    return isinstance(x, nnx.Param) and tuple(map(str, path)) in self.paths

  def __len__(self) -> int:
    return len(self.paths)


def nnx_labels(
    model: Any,
    strategy: Any,
    *,
    stats: Any = None,
    arch: str | None = None,
    head: str | None = None,
    stage_of: Callable[[str], int] | None = None,
    is_norm: NormPredicate | None = None,
) -> Any:
  """Label tree (``'trainable'``/``'frozen'``) over ``nnx.state(model, nnx.Param)``.

  A pure ``nnx.State`` of strings: :func:`jaxbn.masks.make_optimizer` takes it
  for ``nnx.Optimizer(model, tx, wrt=nnx.Param)``, and
  :func:`jaxbn.masks.count` / :func:`jaxbn.masks.summary` read it.
  ``stats``: the NNX filter of the running statistics (``nnx.BatchStat``).
  """
  from flax import nnx  # Lazy: Linen users never import NNX.

  stats = nnx.BatchStat if stats is None else stats
  params = nnx.state(model, nnx.Param)
  batch_stats = nnx.state(model, stats)
  try:
    return make_labels(
        params, strategy, batch_stats=batch_stats, arch=arch, head=head,
        stage_of=stage_of, is_norm=is_norm,
    )
  except ValueError as e:
    if "no norm layer found" not in str(e):
      raise
    term = str(e).split(" selects no parameter")[0]
    raise ValueError(
        f"{term} selects no parameter: no norm layer found in this NNX model (a BatchNorm "
        f"is a module whose {getattr(stats, '__name__', stats)} 'mean'/'var' sit beside "
        "nnx.Param 'scale'/'bias' of the same shape). For a norm whose statistics are "
        "another Variable type pass stats=<that type>; for norms without statistics "
        "pass is_norm=jaxbn.masks.norm_by_name(<regex>)."
    ) from None


def nnx_filter(model: Any, strategy: Any, **kwargs: Any) -> "NNXFilter":
  """An NNX filter selecting the parameters that ``strategy`` trains.

  Args:
    model: an NNX module (any: ``jaxbn.nnx.create_model``'s or your own).
    strategy: as for :func:`make_labels`: ``'bn+head'``,
      ``'from_stage(3)'``, ``'regex:...'``, a :class:`jaxbn.masks.Selector`, a
      ``(path, leaf) -> bool`` callable, or a list (union).
    **kwargs: ``stats=`` (the NNX filter of the running statistics that mark a
      BatchNorm: default ``nnx.BatchStat``; pass your own ``Variable`` type for a
      custom layer) and ``arch``, ``head``, ``stage_of``, ``is_norm`` as for
      :func:`make_labels` (see :func:`nnx_labels`).

  Returns:
    A :class:`NNXFilter` for ``nnx.Optimizer(..., wrt=f)``,
    ``nnx.DiffState(0, f)``, ``nnx.state(model, f)``.

  >>> from flax import nnx
  >>> class Net(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.conv = nnx.Conv(3, 4, (3, 3), rngs=rngs)
  ...     self.bn = nnx.BatchNorm(4, rngs=rngs)
  ...     self.norm = nnx.LayerNorm(4, rngs=rngs)
  ...     self.fc = nnx.Linear(4, 2, rngs=rngs)
  >>> f = nnx_filter(Net(nnx.Rngs(0)), "bn+head")
  >>> sorted("/".join(p) for p in f.paths)
  ['bn/bias', 'bn/scale', 'fc/bias', 'fc/kernel']
  """
  tree = nnx_labels(model, strategy, **kwargs)
  paths, leaves, _ = _flatten(tree)  # string paths, as the filter compares them
  chosen = frozenset(p for p, label in zip(paths, leaves) if label == TRAINABLE)
  name = strategy if isinstance(strategy, str) else _as_selector(strategy).name
  return NNXFilter(name, chosen)


def trainable_mask(labels: Any) -> Any:
  """``True`` where a label is ``'trainable'`` (e.g. for ``optax.masked``).

  >>> trainable_mask({"bn": {"scale": "trainable"}, "conv": {"kernel": "frozen"}})
  {'bn': {'scale': True}, 'conv': {'kernel': False}}
  """
  return jax.tree.map(lambda label: label == TRAINABLE, labels)


def _size(tree: Any) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _labelled_sizes(params: Any, labels: Any) -> list[tuple[Path, str, int]]:
  """(path, label, number of scalars) per label leaf; ``labels`` may be a prefix tree."""
  paths, label_leaves, treedef = _flatten(labels)
  subtrees = treedef.flatten_up_to(params)
  return [(p, label, _size(sub)) for p, label, sub in zip(paths, label_leaves, subtrees)]


def count(params: Any, labels: Any) -> tuple[int, int]:
  """``(trainable, total)`` numbers of scalars.

  >>> import numpy as np
  >>> params = {"bn": {"scale": np.ones(4), "bias": np.zeros(4)},
  ...           "fc": {"kernel": np.zeros((4, 2))}}
  >>> count(params, {"bn": {"scale": "trainable", "bias": "trainable"}, "fc": {"kernel": "frozen"}})
  (8, 16)
  """
  rows = _labelled_sizes(params, labels)
  return sum(n for _, label, n in rows if label == TRAINABLE), sum(n for *_, n in rows)


def _natural_key(name: str) -> list[Any]:
  """'blocks_2' < 'blocks_10' (jax flattens dicts in plain sorted-key order)."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def summary(params: Any, labels: Any, *, depth: int = 1) -> str:
  """A table of trainable / total scalars per module (paths cut to ``depth`` keys).

  Rows are in natural order of module names (``blocks_2`` before ``blocks_10``).

  >>> import numpy as np
  >>> params = {"bn": {"scale": np.ones(4), "bias": np.zeros(4)},
  ...           "fc": {"kernel": np.zeros((4, 2))}}
  >>> print(summary(params, make_labels(params, "regex:fc/.*")))
  module  trainable  total       %
  bn              0      8    0.00
  fc              8      8  100.00
  total           8     16   50.00
  """
  groups: dict[str, list[int]] = {}
  for path, label, n in _labelled_sizes(params, labels):
    row = groups.setdefault("/".join(path[:depth]) or "(root)", [0, 0])
    row[0] += n if label == TRAINABLE else 0
    row[1] += n
  trainable, total = count(params, labels)
  rows = [(name, *groups[name]) for name in sorted(groups, key=_natural_key)]
  rows.append(("total", trainable, total))
  table = [("module", "trainable", "total", "%")] + [
      (name, f"{t:,}", f"{n:,}", f"{100 * t / max(n, 1):.2f}") for name, t, n in rows
  ]
  widths = [max(len(row[i]) for row in table) for i in range(4)]
  return "\n".join(
      "  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])])
      for row in table
  )


def freeze_mask(labels: Any) -> Any:
  """``True`` where a label is ``'frozen'``: the mask of ``optax.freeze`` /
  ``optax.selective_transform``.

  ``optax.selective_transform(tx, freeze_mask=freeze_mask(labels))`` moves the
  same leaves as ``make_optimizer(tx, labels)`` (only its state names differ:
  ``'train'``/``'freeze'``; jaxbn keeps ``'trainable'``/``'frozen'`` so older
  checkpoints restore).

  >>> freeze_mask({"bn": {"scale": "trainable"}, "conv": {"kernel": "frozen"}})
  {'bn': {'scale': False}, 'conv': {'kernel': True}}
  """
  return jax.tree.map(lambda label: label == FROZEN, labels)


def align_labels(labels: Any, params: Any) -> Any:
  """``labels`` re-laid on ``params``' own containers, leaf by leaf, by path.

  A label tree built on one view of the parameters (a Linen dict, a
  ``FrozenDict``, an ``nnx.State`` of ``Param`` s, ``nnx.to_pure_dict``) then
  fits another: ``nnx.Optimizer`` initialises optax with an ``nnx.State`` of
  ``Param`` s and updates it with the pure ``State`` of their arrays. A label
  may sit above several leaves (a prefix tree); every parameter needs one.
  Identical structures are returned as they are.

  >>> align_labels({"fc": "trainable"}, {"fc": {"kernel": 0, "bias": 0}})
  {'fc': {'bias': 'trainable', 'kernel': 'trainable'}}
  """
  label_paths, label_leaves, label_def = _flatten(labels)
  paths, _, treedef = _flatten(params)
  if label_def == treedef:
    return labels
  table = dict(zip(label_paths, label_leaves))
  out = []
  for path in paths:
    for i in range(len(path), -1, -1):
      if path[:i] in table:
        out.append(table[path[:i]])
        break
    else:
      raise ValueError(
          f"No label for parameter {'/'.join(path)!r}: the label tree was built for other "
          f"parameters (label paths look like "
          f"{', '.join('/'.join(p) for p in label_paths[:3])}). Build the labels from the "
          "same model."
      )
  return treedef.unflatten(out)


def make_optimizer(tx: optax.GradientTransformation, labels: Any) -> optax.GradientTransformation:
  """Applies ``tx`` to trainable leaves and ``optax.set_to_zero()`` to frozen ones.

  Built with ``optax.partition``, which hands each inner transformation only its
  own leaves (the others are ``optax.MaskedNode``): frozen leaves get exactly
  zero updates and no optimizer state. ``labels`` may also be a function
  ``params -> labels`` (as ``optax.partition`` allows), and is matched to the
  parameters by path (:func:`align_labels`), so labels made from an
  ``nnx.State`` drive ``nnx.Optimizer(model, tx, wrt=nnx.Param)`` unchanged.

  >>> import jax.numpy as jnp, optax
  >>> params = {"bn": {"scale": jnp.ones(4)}, "conv": {"kernel": jnp.ones((3, 3, 4, 4))}}
  >>> labels = {"bn": {"scale": "trainable"}, "conv": {"kernel": "frozen"}}
  >>> tx = make_optimizer(optax.adam(1e-3), labels)
  >>> sum(x.size for x in jax.tree.leaves(tx.init(params)))  # mu + nu of 4 scalars, count
  9
  >>> updates, _ = tx.update(params, tx.init(params), params)
  >>> float(abs(updates["conv"]["kernel"]).max())
  0.0
  """
  get = labels if callable(labels) else (lambda params: labels)
  return optax.partition(
      {TRAINABLE: tx, FROZEN: optax.set_to_zero()},
      lambda params: align_labels(get(params), params),
  )


def build(
    params: Any,
    strategy: "str | Selector | Sequence[str | Selector]",
    tx: optax.GradientTransformation,
    *,
    batch_stats: Any = None,
    arch: str | None = None,
    head: str | None = None,
    stage_of: Callable[[str], int] | None = None,
    is_norm: NormPredicate | None = None,
) -> tuple[optax.GradientTransformation, Any]:
  """``make_labels`` + ``make_optimizer`` in one call; returns ``(tx, labels)``.

  >>> import jax.numpy as jnp, optax
  >>> params = {"conv": {"kernel": jnp.ones((3, 3, 1, 3))}, "fc": {"kernel": jnp.ones((3, 2))}}
  >>> tx, labels = build(params, "head", optax.sgd(0.1))  # fc: the only 2-D kernel
  >>> count(params, labels)
  (6, 33)
  """
  labels = make_labels(
      params,
      strategy,
      batch_stats=batch_stats,
      arch=arch,
      head=head,
      stage_of=stage_of,
      is_norm=is_norm,
  )
  return make_optimizer(tx, labels), labels


__all__ = [
    "FROZEN",
    "STRATEGIES",
    "TRAINABLE",
    "Selector",
    "align_labels",
    "build",
    "count",
    "freeze_mask",
    "from_stage",
    "is_batchnorm",
    "make_labels",
    "make_optimizer",
    "nnx_filter",
    "norm_by_name",
    "parse_strategy",
    "regex",
    "summary",
    "trainable_mask",
    "where",
]
