"""The package's import structure: layers import downward only, and nothing imports in a circle.

Every ``import`` / ``from ... import`` of ``spikejax`` modules is counted, at module level and
inside functions (a function-level import is still a dependency). Layers, bottom to top:
spiking <- models <- (data, train) <- analysis <- entry points (main, bench, convert, allocator
and ``launch/``); data and train are siblings, and data never imports train.
"""

import ast
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]
PKG = REPO / "spikejax"

LAYER = {"spiking": 0, "models": 1, "data": 2, "train": 2, "analysis": 3}
ENTRY = 4


def _module_name(path: pathlib.Path) -> str:
  rel = path.relative_to(REPO).with_suffix("")
  parts = list(rel.parts)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in PKG.rglob("*.py")}


def _imports(path: pathlib.Path, name: str, known: set[str]) -> set[str]:
  """Every spikejax module ``path`` imports; ``from pkg import sub`` counts as ``pkg.sub``."""
  tree = ast.parse(path.read_text())
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parent = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(parent + ([base] if base else []))
      for a in node.names:
        sub = f"{base}.{a.name}"
        out.add(sub if sub in known else base)
  return {m for m in out if m in known and m != name}


def _graph():
  mods = _modules()
  known = set(mods)
  return {name: _imports(path, name, known) for name, path in mods.items()}


def _layer(module: str) -> int | None:
  parts = module.split(".")
  if len(parts) == 1:
    return None                  # the package's own __init__
  return LAYER.get(parts[1], ENTRY)


def _cycles(graph):
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []
  counter = [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def _without_package_inits(graph):
  """Edges into a package ``__init__`` that only re-exports stand for its submodules: drop
  ``pkg.x -> pkg`` (a submodule naming its own package) so re-export facades are no circle."""
  return {m: {d for d in deps if not (m.startswith(d + "."))} for m, deps in graph.items()}


def test_no_import_circles():
  graph = _without_package_inits(_graph())
  assert len(graph) > 30
  cycles = _cycles(graph)
  assert not cycles, "import circles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_checker_finds_a_circle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert _cycles(graph) == [["a", "b", "c"]]


def test_imports_run_downward():
  bad = []
  for mod, deps in _graph().items():
    lm = _layer(mod)
    if lm is None:
      continue
    for d in deps:
      ld = _layer(d)
      if ld is None:
        continue
      if ld > lm or (lm == ld == LAYER["data"] and mod.split(".")[1] == "data"
                     and d.split(".")[1] == "train"):
        bad.append(f"{mod} -> {d}")
  assert not bad, "upward imports: " + ", ".join(sorted(bad))
