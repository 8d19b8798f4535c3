"""The package's imports go one way: no cycles, and the mode modules never import one another back.

main -> modes -> (train | sample | evaluate | pretrain | demo | describe | toy2d) -> (train_state, sampler,
checkpoint, build, data, models, drift, ...). Function-level imports count: an import placed inside a function
to dodge a cycle is still a cycle.
"""

import ast
import os

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "driftjax")
MODES = {
  "driftjax.train",
  "driftjax.sample",
  "driftjax.evaluate",
  "driftjax.pretrain",
  "driftjax.demo",
  "driftjax.describe",
  "driftjax.toy2d",
}
# The only imports of one mode module by another: training's quick evaluations, and the demo, which runs the
# others in turn.
MODE_TO_MODE = {
  ("driftjax.train", "driftjax.evaluate"),
  ("driftjax.demo", "driftjax.train"),
  ("driftjax.demo", "driftjax.sample"),
  ("driftjax.demo", "driftjax.evaluate"),
  ("driftjax.demo", "driftjax.pretrain"),
}


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, os.path.dirname(PKG)).removesuffix(".py").replace(os.sep, ".")
  return rel.removesuffix(".__init__")


def import_graph() -> dict[str, set[str]]:
  """{module: driftjax modules it imports anywhere in its file}."""
  files = [os.path.join(d, f) for d, _, fs in os.walk(PKG) for f in fs if f.endswith(".py")]
  modules = {_module_name(f) for f in files}
  graph = {}
  for path in files:
    name = _module_name(path)
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    edges = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        edges |= {a.name for a in node.names if a.name in modules}
      elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("driftjax"):
        for a in node.names:  # `from driftjax import x`: the submodule x if there is one, else the package.
          sub = f"{node.module}.{a.name}"
          edges.add(sub if sub in modules else node.module)
    graph[name] = edges - {name}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt) :] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    state[node] = "done"
    stack.pop()
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_find_cycle_sees_one():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
  assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle():
  graph = import_graph()
  assert {"driftjax.train", "driftjax.drift.field", "driftjax.models.gpt2"} <= set(graph)
  assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_layers_go_one_way():
  graph = import_graph()
  back = sorted(
    (a, b)
    for a, bs in graph.items()
    for b in bs
    if b in MODES and (a, b) not in MODE_TO_MODE and a not in ("driftjax.main", "driftjax.modes")
  )
  assert not back, f"imports of mode modules from below or across: {back}"
  for name, edges in graph.items():
    if name.startswith("driftjax.drift"):  # Pure math: jax only.
      assert all(e.startswith("driftjax.drift") for e in edges), (name, edges)
    if name.startswith("driftjax.models"):  # Models know nothing of training or data.
      assert all(e.startswith("driftjax.models") for e in edges), (name, edges)
    if name.startswith("driftjax.data"):  # Data knows nothing of models or training.
      assert all(e.startswith("driftjax.data") for e in edges), (name, edges)
