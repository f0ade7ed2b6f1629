"""The public API: every ``__all__`` names what exists, and is complete.

``jaxkink/__init__.py`` and the namespaces it exports (the subpackages
``data``, ``models``, ``training`` and the modules ``lockstep``,
``montecarlo``, ``rundir``, ``zones``) each list their public names in
``__all__``; type checkers and ``from ... import *`` read it. These tests
fail when a listed name is missing, when a namespace module defines a public
name it does not list, and when the README or a docstring names a function
or class that no ``__all__`` exports.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import pathlib
import re
import types

import pytest

import jaxkink

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'jaxkink'

# The modules jaxkink exports as namespaces (jaxkink.lockstep.kinks_for).
NAMESPACES = sorted(n for n in jaxkink.__all__
                    if inspect.ismodule(getattr(jaxkink, n)))
# Modules with an __all__: the package, its namespaces, and cli (the flag
# checks of the scripts).
WITH_ALL = ['jaxkink', *(f'jaxkink.{n}' for n in NAMESPACES), 'jaxkink.cli']
# Namespaces that are single modules: their __all__ lists every public name
# they define (a subpackage's __all__ chooses among its modules' names).
SINGLE_MODULES = [m for m in WITH_ALL
                  if not hasattr(importlib.import_module(m), '__path__')]


def _defined_names(path: pathlib.Path) -> set[str]:
  """Public names a module defines at top level (not the ones it imports)."""
  names = set()
  for node in ast.parse(path.read_text()).body:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                         ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, ast.Assign):
      for target in node.targets:
        elts = target.elts if isinstance(target, ast.Tuple) else [target]
        names.update(e.id for e in elts if isinstance(e, ast.Name))
    elif isinstance(node, ast.AnnAssign) and isinstance(node.target,
                                                        ast.Name):
      names.add(node.target.id)
  return {n for n in names if not n.startswith('_')}


def _public_modules() -> list[pathlib.Path]:
  """Every module of the package whose path has no leading underscore,
  except the commands of ``jaxkink/experiments/`` (programs: their API is
  their flags)."""
  return [p for p in sorted(PACKAGE.rglob('*.py'))
          if not any(part.startswith('_') and part != '__init__.py'
                     for part in p.relative_to(PACKAGE).parts)
          and p.relative_to(PACKAGE).parts[0] != 'experiments']


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(ROOT).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _exported(module: str, name: str) -> bool:
  """``name``, defined in ``module``, is in an ``__all__`` a user reaches:
  the package's, or that of the exported namespace holding ``module``."""
  if name in jaxkink.__all__:
    return True
  for ns in NAMESPACES:
    full = f'jaxkink.{ns}'
    if module == full or module.startswith(full + '.'):
      return name in importlib.import_module(full).__all__
  return False


def _code_of(markdown: str) -> str:
  """The code of a Markdown text: fenced blocks and inline spans."""
  fenced = re.compile(r'```[^\n]*\n(.*?)```', re.S)
  blocks = fenced.findall(markdown)
  spans = re.findall(r'`([^`\n]+)`', fenced.sub('', markdown))
  return '\n'.join(blocks + spans)


def _identifiers(code: str) -> set[str]:
  """Identifiers in code, less string literals, keyword arguments
  (``flatten=True``) and the parts of paths and flags."""
  code = re.sub(r"'[^'\n]*'|\"[^\"\n]*\"", "''", code)
  return set(re.findall(
      r'(?<![\w/-])([A-Za-z_]\w*)(?![\w/]|\.py|\s*=(?!=))', code))


@pytest.mark.parametrize('module', WITH_ALL)
def test_all_lists_existing_names_once(module):
  mod = importlib.import_module(module)
  names = mod.__all__
  assert all(isinstance(n, str) for n in names), names
  duplicates = sorted({n for n in names if list(names).count(n) > 1})
  assert not duplicates, f'{module}.__all__ lists twice: {duplicates}'
  missing = [n for n in names if not hasattr(mod, n)]
  assert not missing, f'{module}.__all__ names what it lacks: {missing}'


def test_every_exported_namespace_has_all():
  assert {'data', 'lockstep', 'models', 'montecarlo', 'rundir', 'training',
          'zones'} <= set(NAMESPACES)
  lacking = [n for n in NAMESPACES
             if not isinstance(getattr(getattr(jaxkink, n), '__all__', None),
                               (tuple, list))]
  assert not lacking, f'namespaces without __all__: {lacking}'


@pytest.mark.parametrize('module', SINGLE_MODULES)
def test_single_module_all_is_complete(module):
  mod = importlib.import_module(module)
  assert isinstance(mod, types.ModuleType) and mod.__file__
  unlisted = sorted(_defined_names(pathlib.Path(mod.__file__))
                    - set(mod.__all__))
  assert not unlisted, f'{module} defines public names not in __all__: ' \
                       f'{unlisted}'


def test_readme_names_are_exported():
  """A function or class of a public module that the README's code names
  is in an ``__all__`` (one of its definitions, for a name defined twice)."""
  names = _identifiers(_code_of((ROOT / 'README.md').read_text()))
  defined: dict[str, list[str]] = {}
  for path in _public_modules():
    for node in ast.parse(path.read_text()).body:
      if (isinstance(node, (ast.FunctionDef, ast.ClassDef))
          and not node.name.startswith('_')):
        defined.setdefault(node.name, []).append(_module_name(path))
  named = sorted(names & set(defined))
  # The README's tour names these at least (so the check cannot pass by
  # finding nothing).
  assert {'Kinks', 'audit', 'kinkify', 'max_pool', 'preprocess', 'relu',
          'relu_hits', 'with_policy'} <= set(named), named
  unexported = [f'{n} ({", ".join(defined[n])})' for n in named
                if not any(_exported(m, n) for m in defined[n])]
  assert not unexported, f'the README names, unexported: {unexported}'


def _dotted_references() -> list[tuple[str, str]]:
  """``(where, 'jaxkink.a.b')`` for every dotted name in the README and in
  the package's sources outside import statements (docstrings, comments)."""
  texts = [('README.md', (ROOT / 'README.md').read_text())]
  texts += [(str(p.relative_to(ROOT)), p.read_text())
            for p in sorted(PACKAGE.rglob('*.py'))]
  pattern = re.compile(r'(?<![\w.])jaxkink(?:\.[A-Za-z_]\w*)+')
  refs = []
  for where, text in texts:
    for line in text.splitlines():
      if not re.match(r'\s*(from|import)\s', line):
        refs += [(where, m.group(0)) for m in pattern.finditer(line)]
  return refs


def _is_module(parent: types.ModuleType, name: str) -> bool:
  """``parent.name`` is a module (not a function or class of that name,
  as ``jaxkink.data.preprocess`` is, beside the module of that name)."""
  if hasattr(parent, name):
    return inspect.ismodule(getattr(parent, name))
  return importlib.util.find_spec(f'{parent.__name__}.{name}') is not None


def test_dotted_references_are_exported():
  """``jaxkink.NAME`` is in the package's ``__all__``, and
  ``jaxkink.NAMESPACE.NAME`` in that namespace's. (A path through a module,
  ``jaxkink.models.layers.X`` or ``jaxkink.hits.X``, names where a thing is
  defined, not the API.)"""
  refs = _dotted_references()
  assert ('jaxkink/training/core.py', 'jaxkink.lockstep.kinks_for') in refs
  bad = []
  for where, ref in refs:
    head, *rest = ref.split('.')[1:]
    if head in NAMESPACES:
      namespace = getattr(jaxkink, head)
      if rest and not _is_module(namespace, rest[0]) and (
          rest[0] not in namespace.__all__):
        bad.append(f'{where}: {ref}')
    elif not _is_module(jaxkink, head) and head not in jaxkink.__all__ and (
        head != '__version__'):
      bad.append(f'{where}: {ref}')
  assert not bad, f'named but not exported: {sorted(set(bad))}'
