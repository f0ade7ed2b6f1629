"""The README's tour runs as written."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_blocks_run(monkeypatch, tmp_path):
  with open(os.path.join(ROOT, 'README.md')) as f:
    blocks = re.findall(r'```python\n(.*?)```', f.read(), flags=re.S)
  assert len(blocks) == 5, ('README: tour, models, data, kinkify, weights '
                            'blocks expected')
  monkeypatch.chdir(ROOT)  # the data block names ../shared/data
  namespace = {}
  tour, models, data, kinkify, weights = blocks
  exec(compile(tour, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert float(namespace['grads'][1]) == 0.5
  assert namespace['kinks'].pool_beta == 1.0
  assert namespace['out'].shape == (3, 1, 10)  # Kinks.sweep, vmapped
  exec(compile(models, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['logits'].shape == (1, 10)
  # The weights block restores a member of a train run: here the models
  # block's variables, saved where it looks, give back its logits.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  saved = namespace['logits']
  monkeypatch.chdir(tmp_path)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(tmp_path / 'runs' / 'train' / 'weights' / 'member_1',
              {'params': namespace['variables']['params']})
  exec(compile(weights, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  np.testing.assert_array_equal(namespace['logits'], saved)
  monkeypatch.chdir(ROOT)
  exec(compile(kinkify, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  conv = namespace['grads']['params']['Conv_0']['bias']  # every ReLU at 0
  assert not conv[0].any() and conv[1].any()
  report = namespace['report']
  assert [r.kind for r in report] == ['relu', 'max_pool']
  assert report[0].hits == 28 * 28 * 8 and 'max_pool' in str(report)
  if not os.path.isdir(os.path.join(ROOT, '..', 'shared', 'data', 'mnist')):
    pytest.skip('../shared/data/mnist is absent: the data block reads it')
  exec(compile(data, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  assert namespace['x'].shape == (128, 784)


def test_readme_test_command_is_the_ci_command():
  with open(os.path.join(ROOT, 'README.md')) as f:
    readme = f.read()
  with open(os.path.join(ROOT, '.ci', 'run')) as f:
    ci = [l.strip() for l in f if l.strip() and not l.startswith('#')]
  # The first test run is the README's command; runs after it (the
  # exactness tests under another instruction set) come on top.
  test_command = next(l for l in ci if ' pytest' in l)
  assert test_command == 'python -m pytest -n 2'
  assert f"pip install -e '.[test]' && {test_command}" in readme
