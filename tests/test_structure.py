"""The package's shape: no import circles among jaxbn modules, no wrong-way imports.

Imports are read with ``ast`` (nothing is imported), function-level ones
included: a lazy import that closes a circle is still a circle.
"""

from __future__ import annotations

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "jaxbn"


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(REPO).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str, modules: set[str]) -> str | None:
  """The jaxbn module that ``import name`` loads (a name inside a module → the module)."""
  while name and name not in modules:
    name = name.rpartition(".")[0]
  return name or None


def import_graph(root: pathlib.Path = PACKAGE) -> dict[str, set[str]]:
  """module → the jaxbn modules it imports (top-level or inside functions).

  ``from pkg import sub`` counts as importing ``pkg.sub`` when that is a
  module; importing a package's submodule does not count as importing the
  package's ``__init__`` (Python runs it first, but it is not a design edge).
  """
  modules = _modules()
  names = set(modules)
  graph: dict[str, set[str]] = {}
  for name, path in modules.items():
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
      targets: list[str] = []
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                          + ([base] if base else []))
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in names else base
                   for a in node.names]
      for target in targets:
        if target.split(".")[0] != "jaxbn":
          continue
        resolved = _resolve(target, names)
        if resolved and resolved != name:
          edges.add(resolved)
    graph[name] = edges
  return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Every strongly connected set of more than one module (Tarjan), as sorted lists."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  out: list[list[str]] = []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        out.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_cycle_finder_finds_a_planted_cycle(tmp_path):
  assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
  assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_jaxbn_modules():
  graph = import_graph()
  assert "jaxbn.models.registry" in graph and graph["jaxbn.models.resnet"]  # the graph is real
  assert find_cycles(graph) == []


def test_no_wrong_way_imports():
  graph = import_graph()
  # Library modules never reach up into the trainer, its checkpoints or the CLIs.
  trainer_side = {"jaxbn.train", "jaxbn.main", "jaxbn.checkpoint", "jaxbn.bench", "jaxbn.sweep",
                  "jaxbn.config"}
  for lib in ("jaxbn.models", "jaxbn.weights", "jaxbn.ops", "jaxbn.data"):
    for module, edges in graph.items():
      if module == lib or module.startswith(lib + "."):
        assert not edges & trainer_side, (module, sorted(edges & trainer_side))
  # Atomic writers come from their home, jaxbn.io; models never import weights.
  for module, path in _modules().items():
    assert "weights.store import write_json_atomic" not in path.read_text(), module
  for module, edges in graph.items():
    if module.startswith("jaxbn.models"):
      assert not any(e.startswith("jaxbn.weights") for e in edges), module
  # Configs describe experiments; they do not import the weights library.
  for config in (REPO / "configs").rglob("*.py"):
    for node in ast.walk(ast.parse(config.read_text())):
      if isinstance(node, ast.ImportFrom):
        assert not (node.module or "").startswith("jaxbn.weights"), config.name


def long_functions(path: pathlib.Path, max_lines: int = 60, max_params: int = 6) -> list[str]:
  """Functions of ``path`` longer than ``max_lines`` or with more than ``max_params`` parameters."""
  out = []
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      lines = node.end_lineno - node.lineno + 1
      params = len(node.args.posonlyargs) + len(node.args.args) + len(node.args.kwonlyargs)
      if lines > max_lines or params > max_params:
        out.append(f"{node.name}: {lines} lines, {params} parameters")
  return out


def test_function_size_checker_finds_a_long_function(tmp_path):
  body = "\n".join(f"  x{i} = {i}" for i in range(70))
  (tmp_path / "m.py").write_text(f"def f(a, b, c, d, e, f, g):\n{body}\n\ndef g(a):\n  return a\n")
  assert long_functions(tmp_path / "m.py") == ["f: 71 lines, 7 parameters"]


def test_the_trainer_and_set_up_read_in_one_sitting():
  """No trainer or set-up function over 60 lines or with more than 6 parameters."""
  for name in ("train.py", "setup.py"):
    assert long_functions(PACKAGE / name) == [], name
