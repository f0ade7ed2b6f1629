"""The docstring examples of the public modules run and print what they say."""

from __future__ import annotations

import doctest

import pytest

from jaxkink import activations, pooling


@pytest.mark.parametrize('module', [activations, pooling])
def test_docstring_examples(module):
  result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0
  assert result.failed == 0
