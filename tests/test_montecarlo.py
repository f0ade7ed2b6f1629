"""The Monte Carlo volume engine: screening is exact, chunks resume, devices
agree, and the summaries' intervals are the papers' formulas."""

from __future__ import annotations

import functools
import math
import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxkink
from jaxkink import montecarlo as mc
from jaxkink import models
from jaxkink import zones
from conftest import assert_bits_equal, file_bytes, run_on_host_devices


def _mnist(n, dtype, zero_images=0, blank_batches=None):
  """``n`` sample digits in [0, 1]; the first ``zero_images`` of every
  16-example block blanked (an all-zero input), in the 48-example batches
  ``blank_batches`` only if given."""
  ds = jaxkink.data.load('mnist', 'train')
  images = np.array(ds.images[:n])
  for start in range(0, n, 16):
    if blank_batches is None or start // 48 in blank_batches:
      images[start:start + zero_images] = 0
  x = jaxkink.data.preprocess(images, 'mnist', normalize=False, dtype=dtype)
  return x, jnp.asarray(ds.labels[:n])


@functools.lru_cache(maxsize=None)
def _records(policy_name, screen, *, init='pytorch', zero_images=0,
             blank_batches=None, samples=8, chunk=4, loop='vmap'):
  policy = jaxkink.get_policy(policy_name)
  model = models.get('mlp', widths=(16, 16, 10), init_scheme=init,
                     policy=policy)
  x, y = _mnist(192, policy.input_dtype, zero_images, blank_batches)
  engine = mc.Engine(model, policy, mc.kink_pair('relu', (0, 1)),
                     samples=samples, chunk=chunk, screen=screen,
                     theta_loop=loop)
  (xs, ys), tail = mc.stack_batches(x, y, 48)
  assert tail is None
  parts = [engine.run_chunks([c], xs, ys) [0]
           for c in range(engine.num_chunks)]
  return jax.tree.map(lambda *a: np.concatenate(a), *parts), engine, x, y


def _assert_exact_within(rec, engine):
  """What holds bit for bit inside one program: a pair with no kink hit
  does not differ (the screen's exactness argument, DESIGN.md section 4),
  a hit is a zero distance, and a screened program computes exactly the
  pairs (``theta_loop='map'``) or the (chunk, minibatch) blocks
  (``'vmap'``) where a pair hit a kink."""
  flagged = rec.hits.sum(-1) > 0
  assert not (rec.differs & ~flagged).any()
  assert not (rec.differs_first & ~rec.differs).any()
  np.testing.assert_array_equal(rec.min_distance == 0, rec.hits > 0)
  if engine.screen_unit == 'theta':
    np.testing.assert_array_equal(rec.computed, flagged)
  elif engine.screen:
    m, r = flagged.shape
    block = flagged.reshape(m // engine.chunk, engine.chunk, r).any(1)
    np.testing.assert_array_equal(
        rec.computed, np.repeat(block, engine.chunk, axis=0))
  else:
    assert rec.computed.all()
  skipped = ~rec.computed   # the screened-out record
  for field in ('differs', 'differs_first', 'rel_l2', 'rel_l2_first', 'l1'):
    assert not getattr(rec, field)[skipped].any(), field
  assert rec.finite[skipped].all()


def _assert_agree_to_rounding(a, b, rtol):
  """Two programs' records of the same pairs. Programs of other structure
  (with and without the screen's conditional) or shapes (chunk sizes) may
  compile the same forward pass into other kernels and round it otherwise
  (DESIGN.md section 4), which can move a float16 value onto or off a
  kink. Where both saw the same hits and both computed the pair, whether
  it differs agrees, and by how much to ``rtol`` (their reductions and, in
  float16, the fusion boundaries at which XLA rounds float32 intermediates
  back to float16 differ)."""
  same = (a.hits == b.hits).all(-1)
  # A different compilation moves only the rare values that round to
  # exactly 0; on this machine every pair agrees.
  assert same.mean() > 0.5, same
  both = same & a.computed & b.computed
  for field in ('differs', 'differs_first', 'finite'):
    np.testing.assert_array_equal(getattr(a, field)[both],
                                  getattr(b, field)[both])
  for field in ('rel_l2', 'rel_l2_first', 'l1'):
    np.testing.assert_allclose(getattr(a, field)[both],
                               getattr(b, field)[both], rtol=rtol)


@pytest.mark.parametrize('policy,init,zeros,blank,loop', [
    # Real float16 hits: which pairs hit depends on the GEMM kernel.
    pytest.param('float16', 'pytorch', 0, None, 'map', id='float16_hits'),
    # Zero biases and blank inputs in batches 0 and 2: exact zeros there
    # whatever the kernel, so those blocks are computed and differ.
    pytest.param('float16', 'flax', 2, (0, 2), 'vmap', id='float16_planted'),
    pytest.param('float32', 'pytorch', 0, None, 'vmap', id='float32'),
    # Float32 (an exact zero of a generic pre-activation has probability
    # ~1e-7): both branches of the screen are taken on every CPU.
    pytest.param('float32', 'flax', 2, (0, 2), 'map', id='float32_planted'),
])
def test_screened_equals_unscreened(policy, init, zeros, blank, loop):
  screened, engine_s, _, _ = _records(policy, True, init=init,
                                      zero_images=zeros, blank_batches=blank,
                                      loop=loop)
  full, engine_f, _, _ = _records(policy, False, init=init, zero_images=zeros,
                                  blank_batches=blank, loop=loop)
  _assert_exact_within(screened, engine_s)
  _assert_exact_within(full, engine_f)
  _assert_agree_to_rounding(screened, full,
                            2e-2 if policy == 'float16' else 1e-6)
  for rec in (screened, full):
    assert rec.finite.all()
    if blank:   # the planted zeros are hits and change the gradient
      assert rec.computed[:, list(blank)].all()
      assert rec.differs[:, list(blank)].all()
  if policy == 'float32':   # some block had no hit and was skipped
    assert not screened.computed.all()


def test_records_match_an_independent_gradient():
  """Theta 0's records against two plain ``jax.grad`` programs."""
  records, engine, x, y = _records('float32', True, init='flax', zero_images=2)
  model = engine.model
  params = jax.tree.map(lambda a: a[0], engine.sample([0], x)['params'])

  @jax.jit
  def grad(p, xb, yb, s):
    def loss(q):
      logits = model.apply({'params': q}, xb, jaxkink.Kinks(relu_s=s))
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    return jax.grad(loss)(p)

  for b in range(4):
    xb, yb = x[48 * b:48 * (b + 1)], y[48 * b:48 * (b + 1)]
    g0 = jax.tree.leaves(grad(params, xb, yb, 0.0))
    g1 = jax.tree.leaves(grad(params, xb, yb, 1.0))
    differs = any(bool(jnp.any(a != c)) for a, c in zip(g0, g1))
    num = sum(float(jnp.sum((c - a) ** 2)) for a, c in zip(g0, g1))
    den = sum(float(jnp.sum(a ** 2)) for a in g0)
    assert records.differs[0, b] == differs
    np.testing.assert_allclose(records.rel_l2[0, b], math.sqrt(num / den),
                               rtol=1e-5)
    # The first leaf is Dense_0's bias, the first kernel Dense_0's kernel.
    k0, k1 = g0[1], g1[1]
    assert k0.shape == params['Dense_0']['kernel'].shape
    np.testing.assert_allclose(
        records.rel_l2_first[0, b],
        float(jnp.linalg.norm(k1 - k0) / jnp.linalg.norm(k0)), rtol=1e-5)
    # Hidden pre-activations exactly 0: the blank inputs, 16 neurons each,
    # exact in any program (zero inputs, zero biases). The others are
    # generic float32 sums, each exactly 0 with probability ~1e-7, so this
    # separately compiled count agrees with the engine's on every CPU.
    h1 = xb.reshape(48, -1) @ params['Dense_0']['kernel'] + (
        params['Dense_0']['bias'])
    assert records.hits[0, b, 0] == int(jnp.sum(h1 == 0))


def test_weights_do_not_depend_on_chunking():
  """Theta m is drawn from its own key whatever the chunk size: the keys
  and weights are the same bits. The records are those of programs of other
  shapes (4 or 8 thetas per GEMM), equal to rounding (the engine promises
  bit-identical records across device counts, not chunk sizes)."""
  kw = dict(init='flax', zero_images=2, blank_batches=(0, 2))
  a, four, x, _ = _records('float16', True, chunk=4, **kw)
  b, eight, _, _ = _records('float16', True, chunk=8, **kw)
  assert_bits_equal(jax.random.key_data(four.keys([0, 1])),
                    jax.random.key_data(eight.keys([0])))
  halves = [four.sample(range(i, i + 4), x) for i in (0, 4)]
  jax.tree.map(lambda p, q, w: assert_bits_equal(np.concatenate([p, q]), w),
               *halves, eight.sample(range(8), x))
  _assert_exact_within(b, eight)
  _assert_agree_to_rounding(a, b, 2e-2)
  assert a.differs[:, [0, 2]].all() and b.differs[:, [0, 2]].all()


def test_resume_gives_the_uninterrupted_records(tmp_path):
  policy = jaxkink.get_policy('float16')
  model = models.get('mlp', widths=(16, 10), policy=policy)
  x, y = _mnist(100, policy.input_dtype)   # 100 = 2 x 48 + a tail of 4
  engine = mc.Engine(model, policy, mc.kink_pair('relu', (0, 1)),
                     samples=10, chunk=4)
  whole = mc.run(engine, x, y, 48, str(tmp_path / 'whole'))
  assert whole.differs.shape == (10, 3)
  out = str(tmp_path / 'cut')
  assert mc.run(engine, x, y, 48, out, max_calls=1) is None  # "killed"
  assert len(os.listdir(os.path.join(out, 'chunks'))) == 1
  lines = []
  resumed = mc.run(engine, x, y, 48, out, progress=lines.append)
  assert len(lines) == 2 and lines[-1].startswith('thetas 10/10')
  for a, b in zip(whole, resumed):
    assert_bits_equal(a, b)
  assert zones.summarize(whole) == zones.summarize(resumed)


def test_resume_refuses_other_settings_and_repairs_damaged_chunks(tmp_path):
  policy = jaxkink.get_policy('float16')
  model = models.get('mlp', widths=(16, 10), policy=policy)
  x, y = _mnist(64, policy.input_dtype)
  engine = lambda **kw: mc.Engine(model, policy, mc.kink_pair('relu', (0, 1)),
                                  **{'samples': 6, 'chunk': 2, **kw})
  out = str(tmp_path / 'run')
  whole = mc.run(engine(), x, y, 32, out)
  before = file_bytes(out)
  for other in (dict(seed=1), dict(samples=8), dict(chunk=3)):
    with pytest.raises(jaxkink.rundir.RefusedError, match=next(iter(other))):
      mc.run(engine(**other), x, y, 32, out)
  with pytest.raises(jaxkink.rundir.RefusedError, match='batch_size'):
    mc.run(engine(), x, y, 16, out)
  with pytest.raises(jaxkink.rundir.RefusedError, match='data'):
    mc.run(engine(), x[::-1], y[::-1], 32, out)
  assert file_bytes(out) == before
  # Damaged or foreign chunks are moved aside and recomputed.
  chunk = lambda i: os.path.join(out, 'chunks', f'chunk_{i:06d}.npz')
  with open(chunk(0), 'r+b') as f:
    f.truncate(100)
  os.replace(chunk(2), chunk(1))  # chunk 2's file in chunk 1's place
  again = mc.run(engine(), x, y, 32, out)
  for a, b in zip(whole, again):
    assert_bits_equal(a, b)
  assert len(os.listdir(os.path.join(out, 'corrupt'))) == 2
  assert file_bytes(os.path.join(out, 'chunks')) == {
      k[len('chunks/'):]: v for k, v in before.items()
      if k.startswith('chunks/')}


_DEVICES_SCRIPT = textwrap.dedent('''
    import jax, numpy as np, jaxkink
    from jaxkink import montecarlo as mc, models
    assert jax.device_count() == 4, jax.devices()
    policy = jaxkink.get_policy('float16')
    model = models.get('lenet5', policy=policy)
    ds = jaxkink.data.load('mnist', 'train')
    x = jaxkink.data.preprocess(ds.images[:64], 'mnist', dtype=policy.input_dtype)
    (xs, ys), _ = mc.stack_batches(x, jax.numpy.asarray(ds.labels[:64]), 32)
    pair = mc.kink_pair('pool', (0, 1))
    four = mc.Engine(model, policy, pair, samples=8, chunk=2)
    one = mc.Engine(model, policy, pair, samples=8, chunk=2,
                    devices=jax.devices()[:1])
    a = four.run_chunks([0, 1, 2, 3], xs, ys)
    b = [one.run_chunks([i], xs, ys)[0] for i in range(4)]
    for ra, rb in zip(a, b):
      for fa, fb in zip(ra, rb):
        assert np.array_equal(fa.view(np.uint8), fb.view(np.uint8)), (fa, fb)
    print('hits', int(sum(r.hits.sum() for r in a)),
          'differs', int(sum(r.differs.sum() for r in a)))
''')


def test_four_devices_equal_one_device():
  hits = int(run_on_host_devices(_DEVICES_SCRIPT, 4).split()[1])
  assert hits > 0  # ties in the pools: the backward passes did run


def test_kink_pair():
  pair = mc.kink_pair('relu6', (0, 1))
  np.testing.assert_array_equal(pair.relu6_alpha, [0, 1])
  np.testing.assert_array_equal(pair.relu6_beta, [0, 1])
  np.testing.assert_array_equal(pair.relu_s, [0, 0])
  assert mc.kink_pair('relu', (0, 1), legacy_relu_grad=True).legacy_relu_grad
  with pytest.raises(ValueError, match='unknown kink kind'):
    mc.kink_pair('gelu', (0, 1))
  with pytest.raises(ValueError, match='two values'):
    mc.kink_pair('relu', (0, 1, 2))
  with pytest.raises(ValueError, match='blended'):
    mc.make_chunk_fn(models.get('lenet5'), jaxkink.get_policy('float32'),
                     pair.replace(blended_pool_forward=True))


def test_stack_batches():
  x, y = jnp.arange(10.0)[:, None], jnp.arange(10)
  (xs, ys), (xt, yt) = mc.stack_batches(x, y, 4)
  assert xs.shape == (2, 4, 1) and xt.shape == (1, 2, 1)
  np.testing.assert_array_equal(yt, [[8, 9]])
  with pytest.raises(ValueError, match='batch_size'):
    mc.stack_batches(x, y, 11)
  with pytest.raises(ValueError, match='samples'):
    mc.Engine(models.get('mlp'), jaxkink.get_policy('float32'),
              mc.kink_pair('relu', (0, 1)), samples=0)


def test_interval_margins():
  # Hand-computed: sqrt(ln(40) / 2000) and sqrt(0.5 (1/1000 + 1/235) ln 40).
  assert zones.hoeffding_margin(1000) == pytest.approx(0.0429469, abs=1e-7)
  assert zones.mcdiarmid_margin(1000, 235) == pytest.approx(0.0984536,
                                                            abs=1e-7)
  with pytest.raises(ValueError):
    zones.hoeffding_margin(0)


def test_summarize_hand_case():
  differs = np.array([[0, 1, 1], [0, 0, 0]], bool)
  l1 = np.array([[0, 1e-7, 1e-3], [0, 0, 0]])
  hits = np.array([[[0], [1], [2]], [[0], [0], [3]]], np.int32)
  rec = mc.PairRecord(differs=differs, differs_first=differs,
                      rel_l2=l1 * 10, rel_l2_first=l1 * 100, l1=l1,
                      hits=hits, min_distance=np.zeros((2, 3, 1)),
                      computed=np.ones((2, 3), bool),
                      finite=np.ones((2, 3), bool))
  s = zones.summarize(rec)
  assert s['theta_in_zone']['count'] == 1 and s['theta_in_zone']['p'] == 0.5
  assert s['impacted_pairs']['p'] == pytest.approx(2 / 6)
  assert s['first_impacted_minibatch']['median'] == 1
  assert s['screen_violations'] == 0 and s['pairs_with_kink_hits'] == 3
  t = zones.summarize(rec, tau=1e-5)
  assert t['impacted_pairs']['count'] == 1
  assert (t['minor_pairs'], t['major_pairs']) == (1, 1)
  assert t['rel_l2_quartiles'] == [1e-2] * 3
  assert t['rel_l2_first_quartiles'] == [1e-1] * 3
  rec = rec._replace(hits=np.zeros_like(hits))
  assert zones.summarize(rec)['screen_violations'] == 2


def test_processes_split_the_chunks_and_process_0_gathers(tmp_path,
                                                          monkeypatch):
  """Two processes' shares (run one after the other) give the one-process
  records; the process index and count are what ``jax.distributed`` sets."""
  policy = jaxkink.get_policy('float16')
  model = models.get('mlp', widths=(16, 10), policy=policy)
  x, y = _mnist(100, policy.input_dtype)
  engine = mc.Engine(model, policy, mc.kink_pair('relu', (0, 1)),
                     samples=10, chunk=4)
  whole = mc.run(engine, x, y, 48, str(tmp_path / 'whole'))
  out = str(tmp_path / 'shared')
  # Process 0 creates the run directory (its manifest); the others wait for
  # it, then write their chunks without taking the lock.
  jaxkink.rundir.RunDir.open(out, mc.engine_settings(engine, x, y, 48),
                             primary=True).close()
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  # The two processes run one after the other here, so the barrier of a
  # real run's RunDir.open (tests/test_distributed.py) cannot be met.
  monkeypatch.setattr(jaxkink.rundir, '_barrier', lambda settings: None)
  assert mc.run(engine, x, y, 48, out) is None
  assert sorted(os.listdir(os.path.join(out, 'chunks'))) == [
      'chunk_000001.npz']
  monkeypatch.setattr(jax, 'process_index', lambda: 0)
  gathered = mc.run(engine, x, y, 48, out)
  for a, b in zip(whole, gathered):
    assert_bits_equal(a, b)


def test_settings_name_the_program_changes():
  """Run directories of the earlier programs are refused, not mixed: the
  per-theta screen, the per-theta unscreened loop, the map loop's two
  ``vjp`` and its screen without a conditional below 32 bits are in the
  settings; the vmapped programs (unchanged) add nothing."""
  policy = jaxkink.get_policy('float32')
  model = models.get('mlp', widths=(16, 10), policy=policy)
  pair = mc.kink_pair('relu', (0, 1))
  settings = lambda **kw: mc.Engine(model, policy, pair, samples=2, chunk=2,
                                    **kw).screen_settings()
  assert settings(theta_loop='map') == {'screen_unit': 'theta',
                                        'pair_trace': 'two_vjp'}
  assert settings(theta_loop='map', screen=False) == {
      'backward_loop': 'theta', 'pair_trace': 'two_vjp'}
  assert settings(theta_loop='programs') == {'screen_unit': 'theta'}
  half = jaxkink.get_policy('float16')
  model16 = models.get('mlp', widths=(16, 10), policy=half)
  settings16 = lambda **kw: mc.Engine(model16, half, pair, samples=2,
                                      chunk=2, **kw).screen_settings()
  assert settings16(theta_loop='map') == {
      'screen_unit': 'theta', 'screen_branch': 'select',
      'pair_trace': 'two_vjp'}
  assert settings16(theta_loop='map', screen=False) == settings(
      theta_loop='map', screen=False)
  assert settings16(theta_loop='programs') == {'screen_unit': 'theta'}
  assert settings(theta_loop='vmap') == {}
  assert settings(theta_loop='vmap', screen=False) == {}


@functools.lru_cache(maxsize=None)
def _compiled_map_program(name, screen):
  policy = jaxkink.get_policy(name)
  model = models.get('mlp', widths=(32, 32, 10), policy=policy)
  fn = mc.make_chunk_fn(model, policy, mc.kink_pair('relu', (0, 1)),
                        screen=screen, theta_loop='map')
  xs = jnp.zeros((2, 8, 784), policy.input_dtype)
  ys = jnp.zeros((2, 8), jnp.int32)
  keys = jax.random.split(jax.random.key(0), 2)
  with policy.scope():
    return jax.jit(fn).lower(keys, xs, ys).compile().as_text()


def test_half_precision_map_program_runs_one_forward_pass():
  """The two kink settings' forward passes are one computation in the
  compiled ``theta_loop='map'`` program in float16 as in float32 (the
  same number of matrix products), on one device: XLA's CPU backend adds
  float32 converts of the float16 input per setting, which it used to
  hoist out of the loop over thetas as two operands, so that it computed
  the whole forward pass twice (3 more products here)."""
  products = lambda name: _compiled_map_program(name, False).count(' dot(')
  f32 = products('float32')
  assert f32 >= 3 + 2 * 5   # one forward pass, two backward passes
  assert products('float16') == f32
  assert products('bfloat16') == f32


def test_half_precision_screen_holds_no_conditional():
  """Below 32 bits the screened map program is the unscreened one plus
  the screened-out records (no ``conditional``, as many products), and in
  float32 the conditional skips the backward passes. (The mixed policies
  compute in float16 or bfloat16, so they take the same path.)
  test_screened_equals_unscreened checks its records where pairs hit no
  kink."""
  f32 = _compiled_map_program('float32', True)
  assert ' conditional(' in f32
  for name in ('float16', 'bfloat16'):
    screened = _compiled_map_program(name, True)
    assert ' conditional(' not in screened, name
    assert screened.count(' dot(') == _compiled_map_program(
        name, False).count(' dot('), name
