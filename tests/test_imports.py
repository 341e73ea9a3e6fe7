"""The package's imports: nothing outside itself (it works installed, without the
repository's configs/ and study/), no cycle, and docs/architecture.md's list of each
module's imports true to the code. Imports are read from the source (top level and inside
functions alike), so a lazy import counts."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "mtbert_jax")
OUTSIDE = ("configs", "study", "benchmarks", "tests", "launch")


def _modules() -> dict[str, ast.Module]:
  return {name[:-3]: ast.parse(open(os.path.join(PACKAGE, name), encoding="utf-8").read())
          for name in sorted(os.listdir(PACKAGE))
          if name.endswith(".py") and name != "__init__.py"}


def _imported(tree: ast.Module) -> set[str]:
  """Every module name an import statement of `tree` names (`a.b` as `a.b`)."""
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names |= {alias.name for alias in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names |= {f"{node.module}.{alias.name}" for alias in node.names}
  return names


def package_imports() -> dict[str, set[str]]:
  """{module: the modules of the package it imports}."""
  modules = _modules()
  return {name: {n.split(".")[1] for n in _imported(tree)
                 if n.startswith("mtbert_jax.") and n.split(".")[1] in modules}
          for name, tree in modules.items()}


def test_the_package_imports_nothing_of_the_repository_and_leaves_sys_path_alone():
  for name, tree in _modules().items():
    outside = {n for n in _imported(tree) if n.split(".")[0] in OUTSIDE}
    assert not outside, f"mtbert_jax/{name}.py imports {sorted(outside)}"
    for node in ast.walk(tree):
      if isinstance(node, ast.Attribute) and node.attr == "path":
        assert not (isinstance(node.value, ast.Name) and node.value.id == "sys"), (
            f"mtbert_jax/{name}.py line {node.lineno} uses sys.path")


def test_no_import_cycle():
  graph = package_imports()
  done: set[str] = set()

  def visit(name: str, path: list[str]) -> None:
    if name in path:
      raise AssertionError("import cycle: " + " -> ".join(path[path.index(name):] + [name]))
    if name in done:
      return
    for dep in sorted(graph[name]):
      visit(dep, path + [name])
    done.add(name)

  for name in graph:
    visit(name, [])


def test_the_architecture_page_lists_each_modules_imports():
  with open(os.path.join(ROOT, "docs", "architecture.md"), encoding="utf-8") as f:
    text = f.read()
  block = text.split("checks this list against the code):\n\n```\n", 1)[1].split("```", 1)[0]
  listed: dict[str, set[str]] = {}
  last = None
  for line in block.splitlines():
    entry = re.fullmatch(r"  (\w+)\s+(.*)", line)
    if entry:
      last = entry.group(1)
      listed[last] = set()
      rest = entry.group(2)
    else:
      rest = line.strip()
    listed[last] |= {n.strip() for n in rest.split(",") if n.strip() not in ("", "-")}
  assert listed == package_imports()


def test_report_and_evaluate_import_from_a_copy_of_the_package_alone(tmp_path):
  """An installed copy: the package in a folder of its own, run from a folder without the
  repository's configs/ or study/."""
  site = tmp_path / "site"
  shutil.copytree(PACKAGE, site / "mtbert_jax", ignore=shutil.ignore_patterns("__pycache__"))
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["PYTHONPATH"] = str(site)
  code = ("import sys, mtbert_jax.report, mtbert_jax.evaluate; "
          "print(mtbert_jax.report.__file__); "
          "print(sorted(m for m in sys.modules if m.split('.')[0] in ('configs', 'study')))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                        capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  where, outside = proc.stdout.splitlines()[-2:]
  assert where.startswith(str(site)) and outside == "[]"
