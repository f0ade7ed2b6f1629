"""experiments/train.py end to end: the erratum comparison on two devices,
resume from the run directory, presets with overrides, bad flags."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'experiments', 'train.py')
TINY = ('--model=mlp', '--widths=16,10', '--epochs=2', '--batch_size=100',
        '--train_examples=500')


def _env(devices: int = 1):
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS='cpu')
  env.pop('JAXKINK_DATA_DIR', None)  # the bundled MNIST sample
  if devices > 1:
    env['XLA_FLAGS'] = f'--xla_force_host_platform_device_count={devices}'
  return env


def _train(*args, devices=1, check=True):
  proc = subprocess.run([sys.executable, SCRIPT, *args], env=_env(devices),
                        capture_output=True, text=True, timeout=600)
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def test_erratum_comparison_on_two_devices_and_resume(tmp_path):
  out = str(tmp_path / 'run')
  args = (*TINY, '--seeds=2', '--kink_values=0,1', '--compare_legacy',
          '--optimizer=sgd', '--momentum=0.9', '--lr=0.05', f'--out={out}')
  first = _train(*args, devices=2)
  assert '2 devices' in first.stderr  # absl INFO lines
  final = json.loads(first.stdout.splitlines()[-1])['final_test_acc_mean']
  assert list(final) == ['legacy_off', 'legacy_on']
  assert all(list(v) == ['s=0', 's=1'] for v in final.values()), final
  for name in ('erratum.json', 'erratum.png'):
    assert os.path.getsize(os.path.join(out, name)) > 100
  for variant in ('legacy_off', 'legacy_on'):
    run = os.path.join(out, variant)
    metrics = json.load(open(os.path.join(run, 'metrics.json')))
    assert [h['epoch'] for h in metrics['history']] == [1, 2]
    assert len(metrics['history'][-1]['test_acc']) == 4
    assert [m['seed'] for m in metrics['members']] == [0, 0, 1, 1]
    flags = json.load(open(os.path.join(run, 'flags.json')))
    assert flags['legacy_relu_grad'] == (variant == 'legacy_on')
    for png in ('test_accuracy.png', 'train_loss.png',
                'weight_distance.png'):
      assert os.path.getsize(os.path.join(run, png)) > 1000
  summary = json.load(open(os.path.join(out, 'legacy_off', 'summary.json')))
  assert [r['kink_value'] for r in summary['per_kink']] == [0.0, 1.0]
  # Running it again resumes after the last epoch and changes nothing.
  again = _train(*args, devices=2)
  assert 'resuming after epoch 2' in again.stderr
  assert json.load(open(os.path.join(out, 'legacy_off', 'summary.json'))) == (
      summary)


def test_preset_with_overrides_and_bad_flags(tmp_path):
  """Presets fill the flags the command line leaves out (in process)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top
  from jaxkink.experiments import train as script  # pylint: disable=g-import-not-at-top
  from jaxkink import training  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  script.define_flags(fv)
  fv(['train.py', '--preset=relu_mlp_mnist', '--reduced', '--widths=16,10',
      '--seeds=1', '--kink_values=0,0.5'])
  s = script.settings_from_flags(fv)
  assert s['momentum'] == 0.9 and s['weight_decay'] == 5e-4  # preset
  assert s['epochs'] == 3 and s['model'] == 'mlp'  # reduced
  assert s['widths'] == ['16', '10'] and s['kink_values'] == ['0', '0.5']
  assert s['seeds'] == 1  # command line
  fv.unparse_flags()
  # --helpfull lists every preset, and an unknown name is refused while
  # parsing with the list (an enum flag, as volume.py's --preset).
  names = sorted(training.PRESETS)
  assert fv['preset'].help.startswith(f'<{"|".join(names)}>: ')
  with pytest.raises(flags.IllegalFlagValueError,
                     match=re.escape('value should be one of <'
                                     f'{"|".join(names)}>')):
    fv(['train.py', '--preset=nope'])
  fv.unparse_flags()
  fv(['train.py', '--reduced'])
  with pytest.raises(app.UsageError, match='--reduced needs --preset'):
    script.settings_from_flags(fv)
  with pytest.raises(app.UsageError, match='unknown dataset'):
    script.load_data('cifar100', None, None)
  with pytest.raises(script.data.DataError, match='cifar10_sample needs'):
    script.load_data('cifar10_sample', str(tmp_path), None)
  # On the command line: a clear message, no traceback from deep inside.
  bad = _train(*TINY, '--optimizer=rmsprop', f'--out={tmp_path}/bad',
               check=False)
  assert bad.returncode != 0
  assert 'valid: sgd, adam' in bad.stderr and 'Traceback' not in bad.stderr


def test_final_line_has_one_shape():
  """The JSON line printed at the end: {rule: {label: accuracy}} with or
  without --compare_legacy."""
  from jaxkink.experiments import train as script  # pylint: disable=g-import-not-at-top
  summary = {'epochs': 2, 'per_kink': [
      {'label': 's=0', 'test_acc_mean': 0.912345},
      {'label': 's=1', 'test_acc_mean': 0.9}]}
  assert script.rule_name(False) == 'legacy_off'
  assert script.rule_name(True) == 'legacy_on'
  one = script.final_line({script.rule_name(False): summary})
  assert one == {'final_test_acc_mean': {
      'legacy_off': {'s=0': 0.9123, 's=1': 0.9}}}
  both = script.final_line({'legacy_off': summary, 'legacy_on': summary})
  assert both['final_test_acc_mean']['legacy_on'] == (
      one['final_test_acc_mean']['legacy_off'])
