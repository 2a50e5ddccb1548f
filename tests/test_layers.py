"""The import graph of `agpo_jax`: no module imports from a higher layer, and nothing is circular.

Layers, lowest first (a module may import from its own layer or lower ones):

  0  base        configs, algorithms, verifiers, checkpointing, metrics, tokenizers,
                chat_template, chat_render, checkpoint_digests, checkpoint_trees
  1  models      the model config and the Flax transformer
  2  sharding    the mesh and its rules, multi-host helpers
  3  sampling    the jitted sampler; tasks (problems, the testbed, the math benchmarks);
                pretrained (checkpoint weights placed on the mesh)
  4  planning    memory_plan
  5  training    train (state, steps, rollouts, the loops)
  6  evaluation  pass@k, counts, the boundary study, plots
  7  entry       defaults (every config block), validation (checks a whole config), main

Every import counts, at module level or inside a function.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "agpo_jax"

LAYERS = (
    ("agpo_jax.configs", "agpo_jax.config_specs", "agpo_jax.chat_template",
     "agpo_jax.algorithms", "agpo_jax.verifiers", "agpo_jax.checkpointing",
     "agpo_jax.checkpoint_digests", "agpo_jax.metrics", "agpo_jax.tokenizers",
     "agpo_jax.chat_render", "agpo_jax.checkpoint_trees"),
    ("agpo_jax.models",),
    ("agpo_jax.sharding",),
    ("agpo_jax.sampling", "agpo_jax.tasks", "agpo_jax.pretrained"),
    ("agpo_jax.memory_plan",),
    ("agpo_jax.train",),
    ("agpo_jax.evaluation",),
    ("agpo_jax.defaults", "agpo_jax.validation", "agpo_jax.runs", "agpo_jax.relevance_app",
     "agpo_jax.main"),
)


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, pathlib.Path]:
  return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: pathlib.Path, name: str, known: set[str]) -> set[str]:
  """The agpo_jax modules `path` imports (a `from package import name` counts as the
  submodule when `name` is one)."""
  out = set()
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      out.update(a.name for a in node.names if a.name.startswith("agpo_jax"))
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative import
        anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      if not base.startswith("agpo_jax"):
        continue
      for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.add(sub if sub in known else base)
  return out - {name}


def _layer(module: str) -> int:
  for index, members in enumerate(LAYERS):
    if any(module == m or module.startswith(m + ".") for m in members):
      return index
  raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to the docstring)")


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  known = set(modules)
  return {name: _imports(path, name, known) for name, path in modules.items()}


def test_every_module_has_a_layer():
  for module in _modules():
    if module != "agpo_jax":
      _layer(module)


def test_no_import_runs_upward():
  upward = [f"{src} (layer {_layer(src)}) imports {dst} (layer {_layer(dst)})"
            for src, targets in _graph().items() if src != "agpo_jax"
            for dst in sorted(targets) if dst != "agpo_jax" and _layer(dst) > _layer(src)]
  assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_no_import_cycle():
  graph = _graph()
  state: dict[str, int] = {}  # 1: on the current path, 2: done
  path: list[str] = []

  def visit(node: str):
    state[node] = 1
    path.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == 1:
        cycle = path[path.index(nxt):] + [nxt]
        pytest.fail("import cycle: " + " -> ".join(cycle))
      if nxt in graph and not state.get(nxt):
        visit(nxt)
    path.pop()
    state[node] = 2

  for node in sorted(graph):
    if not state.get(node):
      visit(node)


def test_the_checker_sees_an_upward_import(tmp_path):
  """The walker itself: an import from a higher layer and a `from package import submodule`
  are both found (so the two tests above can fail)."""
  source = tmp_path / "rules.py"
  source.write_text("from agpo_jax.train import rl_step\nimport agpo_jax.main\n")
  found = _imports(source, "agpo_jax.sharding.rules", set(_modules()))
  assert found == {"agpo_jax.train.rl_step", "agpo_jax.main"}
  assert _layer("agpo_jax.train.rl_step") > _layer("agpo_jax.sharding.rules")
