"""Checkpointer: exact round trips, retention, atomicity, refusal of mismatched restores."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agpo_jax.checkpointing import Checkpointer, data_to_key, key_to_data

MODEL = {"num_layers": 2, "d_model": 64, "num_heads": 4, "rope": {"theta": 1e4},
         "tied": (True,)}


def _state(seed=0, hidden=4):
  """Params (float32, bfloat16), an Adam state with non-zero moments, a step and key data."""
  rng = np.random.default_rng(seed)
  def tree(scale):
    return {"embed": jnp.asarray(scale * rng.standard_normal((8, hidden)), jnp.float32),
            "layer": {"w": jnp.asarray(scale * rng.standard_normal((hidden, hidden)),
                                       jnp.bfloat16)}}
  params = tree(1.0)
  adam_state, empty = optax.adam(1e-2).init(params)
  adam_state = adam_state._replace(count=jnp.int32(3), mu=tree(0.1),
                                  nu=jax.tree.map(jnp.abs, tree(0.01)))
  return {"params": params, "opt_state": (adam_state, empty), "step": jnp.int32(7),
          "rng": key_to_data(jax.random.key(seed + 1))}


def _assert_bit_identical(restored, expected):
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    assert got.dtype == want.dtype and got.shape == want.shape
    assert np.asarray(got).tobytes() == np.asarray(want).tobytes()


def test_round_trip_is_bit_identical(tmp_path):
  state = _state()
  meta = {"model": MODEL, "data": {"epoch": 1, "position": 123}}
  with Checkpointer(tmp_path / "ckpt") as checkpointer:
    assert checkpointer.save(7, state, meta)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                            state)
    restored, restored_meta = checkpointer.restore(abstract_state=abstract,
                                                   expected_meta={"model": MODEL})
  _assert_bit_identical(restored, state)
  assert isinstance(restored["opt_state"][0], optax.ScaleByAdamState)
  assert restored_meta["data"] == {"epoch": 1, "position": 123}
  key = data_to_key(restored["rng"], "threefry2x32")
  np.testing.assert_array_equal(jax.random.bits(key, (4,)),
                                jax.random.bits(jax.random.key(1), (4,)))


def test_async_save_then_restore_into_arrays(tmp_path):
  state = _state(seed=3)
  with Checkpointer(tmp_path, async_save=True) as checkpointer:
    checkpointer.save(1, state, {"note": "async"})
    checkpointer.wait()
    restored, meta = checkpointer.restore(1, abstract_state=_state(seed=4))
  _assert_bit_identical(restored, state)
  assert meta == {"note": "async"}


def test_keeps_the_newest_max_to_keep_and_honours_the_interval(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path.parent)
  state = {"x": jnp.arange(3.0)}
  with Checkpointer(tmp_path.name, max_to_keep=2, save_interval_steps=2) as checkpointer:
    assert checkpointer.latest_step() is None
    saved = [step for step in range(1, 9) if checkpointer.save(step, state, {})]
    assert saved == [1, 2, 4, 6, 8]  # orbax also saves the first step of a fresh run
    assert not checkpointer.save(3, state, {}, force=True)  # not after the latest
    assert not checkpointer.save(8, state, {}, force=True)
    assert checkpointer.all_steps() == [6, 8] and checkpointer.latest_step() == 8
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["6", "8"]
  with Checkpointer(tmp_path) as reopened:
    assert reopened.latest_step() == 8


def test_partially_written_checkpoint_is_ignored(tmp_path):
  state = _state()
  with Checkpointer(tmp_path) as checkpointer:
    checkpointer.save(5, state, {"step": 5})
  # What a save killed before orbax's final rename leaves: a complete-looking step under a
  # temporary name, and an empty one.
  shutil.copytree(tmp_path / "5", tmp_path / "9.orbax-checkpoint-tmp-1700000000")
  (tmp_path / "12.orbax-checkpoint-tmp-1700000001").mkdir()
  with Checkpointer(tmp_path) as checkpointer:
    assert checkpointer.all_steps() == [5] and checkpointer.latest_step() == 5
    restored, meta = checkpointer.restore(abstract_state=state)
    with pytest.raises(FileNotFoundError, match="no checkpoint for step 9"):
      checkpointer.restore(9, abstract_state=state)
  assert meta == {"step": 5}
  _assert_bit_identical(restored, state)


def test_different_model_config_is_refused_naming_fields(tmp_path):
  state = _state()
  with Checkpointer(tmp_path) as checkpointer:
    checkpointer.save(1, state, {"model": MODEL})
    other = dict(MODEL, num_layers=4, d_model=128, rope={"theta": 5e5})
    with pytest.raises(ValueError, match="different model config") as info:
      checkpointer.restore(abstract_state=state, expected_meta={"model": other})
  message = str(info.value)
  assert str(tmp_path / "1") in message
  assert "num_layers 2 != 4" in message and "d_model 64 != 128" in message
  assert "rope.theta 10000.0 != 500000.0" in message
  assert "num_heads" not in message and "tied" not in message


def test_shape_mismatch_names_the_parameter(tmp_path):
  with Checkpointer(tmp_path) as checkpointer:
    checkpointer.save(1, _state(hidden=4), {})
    with pytest.raises(ValueError, match=r"layer\.w: checkpoint \(4, 4\) != expected \(6, 6\)"):
      checkpointer.restore(abstract_state=_state(hidden=6))


def test_restore_without_checkpoint_raises(tmp_path):
  with Checkpointer(tmp_path) as checkpointer:
    assert checkpointer.latest_step() is None and checkpointer.all_steps() == []
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
      checkpointer.restore(abstract_state=_state())


def test_typed_keys_and_unserialisable_meta_are_refused(tmp_path):
  with Checkpointer(tmp_path) as checkpointer:
    with pytest.raises(TypeError, match=r"state\['rng'\] is a typed PRNG key"):
      checkpointer.save(1, {"rng": jax.random.key(0)}, {})
    with pytest.raises(TypeError, match="JSON"):
      checkpointer.save(1, {"x": jnp.zeros(2)}, {"array": np.zeros(2)})
    assert checkpointer.all_steps() == []
