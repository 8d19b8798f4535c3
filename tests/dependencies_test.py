"""Every third-party package the code imports is declared in pyproject.toml, in the right group.

Being installed as some other package's dependency is not being declared: the check reads pyproject's lists,
not the environment's. Imports are found with ast, function-level ones included, and mapped to the
distributions that provide them with importlib.metadata.packages_distributions().
"""

import ast
import importlib.metadata
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIRST_PARTY = {"driftjax", "configs", "benchmarks", "tests"}
# A one-off script run by hand in its own environment (its docstring says how); no test imports it.
NOT_CHECKED = {ROOT / "tests" / "testdata" / "make_gpt2_golden.py"}


def normalize(name: str) -> str:
  """PEP 503 name: case and runs of -_. do not matter."""
  return re.sub(r"[-_.]+", "-", name).lower()


def declared(*groups: str) -> set[str]:
  """Normalized distribution names of pyproject's `dependencies` ("") and the named optional extras."""
  with open(ROOT / "pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
  specs = []
  for g in groups:
    specs += project["dependencies"] if g == "" else project["optional-dependencies"][g]
  return {normalize(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", s).group(0)) for s in specs}


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
  names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
  return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)


def imports(path: pathlib.Path) -> list[tuple[str, int, bool]]:
  """(top-level module, line, guarded) of each absolute import; guarded: inside a try that catches ImportError."""
  found = []

  def visit(node, guarded):
    if isinstance(node, ast.Import):
      found.extend((a.name.split(".")[0], node.lineno, guarded) for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      found.append((node.module.split(".")[0], node.lineno, guarded))
    if isinstance(node, ast.Try):
      body_guarded = guarded or any(_catches_import_error(h) for h in node.handlers)
      for child in node.body:
        visit(child, body_guarded)
      for child in [*node.handlers, *node.orelse, *node.finalbody]:
        visit(child, guarded)
    else:
      for child in ast.iter_child_nodes(node):
        visit(child, guarded)

  visit(ast.parse(path.read_text(), str(path)), False)
  return found


def undeclared(paths, allowed: set[str], allowed_guarded: set[str]) -> list[str]:
  """'file:line: module (distribution) ...' for each third-party import whose distribution is not allowed."""
  providers = importlib.metadata.packages_distributions()
  problems = []
  for path in paths:
    for module, line, guarded in imports(path):
      if module in sys.stdlib_module_names or module in FIRST_PARTY:
        continue
      if (path.parent / f"{module}.py").exists() or (path.parent / module).is_dir():
        continue  # A sibling module (tests import train_test's helpers).
      where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{line}"
      dists = providers.get(module)
      if not dists:
        problems.append(f"{where}: {module} is not installed, so its distribution cannot be checked")
        continue
      ok = allowed_guarded if guarded else allowed
      if not any(normalize(d) in ok for d in dists):
        problems.append(f"{where}: {module} (distribution {' or '.join(dists)}) is not declared")
  return problems


def python_files(folder: str) -> list[pathlib.Path]:
  return sorted(p for p in (ROOT / folder).rglob("*.py") if p not in NOT_CHECKED)


def test_library_and_benchmarks_imports_are_runtime_dependencies():
  runtime = declared("")
  # An import the code guards (try/except ImportError, failing with advice) may come from a non-dev extra.
  extras = declared("", "eval")
  paths = python_files("driftjax") + python_files("benchmarks") + python_files("configs")
  problems = undeclared(paths, runtime, extras)
  assert not problems, "declare in pyproject's dependencies:\n" + "\n".join(problems)


def test_test_imports_are_runtime_or_dev_dependencies():
  # The test command's install is `.[dev,eval]` (README, .ci/run).
  allowed = declared("", "dev", "eval")
  problems = undeclared(python_files("tests"), allowed, allowed)
  assert not problems, "declare in pyproject's dependencies or dev extra:\n" + "\n".join(problems)


def test_the_check_catches_an_undeclared_import(tmp_path):
  source = tmp_path / "mod.py"
  source.write_text(
    "import os\nimport numpy as np\n\ndef f():\n  from tqdm import tqdm\n"
    "try:\n  import nltk\nexcept ImportError as e:\n  raise ImportError('pip install') from e\n"
  )
  assert [(m, g) for m, _, g in imports(source)] == [("os", False), ("numpy", False), ("tqdm", False), ("nltk", True)]
  problems = undeclared([source], {"numpy"}, {"numpy", "nltk"})
  assert problems == [f"{source}:5: tqdm (distribution tqdm) is not declared"]
  assert undeclared([source], {"numpy"}, {"numpy"})[1].endswith("7: nltk (distribution nltk) is not declared")
