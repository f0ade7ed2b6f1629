"""The docstring examples of the public modules run and print what they say."""

from __future__ import annotations

import doctest
import importlib

import pytest

from jaxkink import activations, pooling

# ``jaxkink.kinkify`` and ``jaxkink.audit`` are the functions; these are the
# modules of the same names.
kinkify_module = importlib.import_module('jaxkink.kinkify')
audit_module = importlib.import_module('jaxkink.audit')


@pytest.mark.parametrize('module', [activations, pooling, kinkify_module,
                                    audit_module],
                         ids=['activations', 'pooling', 'kinkify', 'audit'])
def test_docstring_examples(module):
  result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0
  assert result.failed == 0
