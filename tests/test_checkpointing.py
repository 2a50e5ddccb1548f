"""Checkpointer: exact round trips, retention, atomicity, refusal of mismatched restores, and
integrity: checksums verified on restore, fallback past corrupt steps, no non-finite saves,
rotation that keeps the newest verified checkpoint."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from agpo_jax import checkpoint_digests, checkpointing
from agpo_jax.checkpointing import Checkpointer, CorruptCheckpoint, data_to_key, key_to_data

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


# -- integrity: checksums, fallback, rotation -------------------------------------------------


def _data_files(step_dir):
  """The array data files of a step (OCDBT), largest first."""
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
  return sorted(files, key=lambda p: p.stat().st_size, reverse=True)


def _flip_16_bytes(path):
  data = bytearray(path.read_bytes())
  middle = len(data) // 2
  data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
  path.write_bytes(bytes(data))


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(path.stat().st_size // 2)


FAULTS = {
    # (what is done to step 2, what the warning names)
    # Flipped bytes are caught by the digest, or by the reader first when they land in a
    # compressed block's framing (where they fall depends on how OCDBT laid the file out).
    "flipped_bytes": (lambda d: _flip_16_bytes(_data_files(d)[0]),
                      ("checksum mismatch", "reading arrays")),
    "truncated_file": (lambda d: _truncate(_data_files(d)[0]), "reading arrays"),
    "missing_file": (lambda d: _data_files(d)[0].unlink(), "reading arrays"),
    "garbage_meta": (lambda d: (d / "meta" / "metadata").write_text("{garbage"),
                     "meta/metadata: unreadable"),
    "garbage_array_metadata": (lambda d: (d / "state" / "_METADATA").write_text("{"),
                               "array metadata"),
}


# A failed tensorstore read leaves orbax's other pending reads to be collected unawaited.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, fault):
  corrupt, named = FAULTS[fault]
  # Arrays over 1 KiB: OCDBT stores smaller values inline in its index, not in data files.
  good, newest = _state(seed=1, hidden=64), _state(seed=2, hidden=64)
  with Checkpointer(tmp_path) as checkpointer:
    assert checkpointer.save(1, good, {"step": 1}) and checkpointer.save(2, newest, {"step": 2})
  corrupt(tmp_path / "2")
  with Checkpointer(tmp_path, max_to_keep=1) as checkpointer:
    restored, meta = checkpointer.restore(abstract_state=_state(seed=3, hidden=64))
    assert meta == {"step": 1} and checkpointer.last_verified_step == 1
    _assert_bit_identical(restored, good)
    # The next save sets the corrupt step aside (kept for inspection) and can write step 2.
    assert checkpointer.save(2, restored, {"step": 2})
    assert checkpointer.all_steps() == [2]
  assert (tmp_path / "2.corrupt").is_dir()
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  failed = next(w for w in warnings if "checkpoint step 2 in" in w and "is corrupt" in w)
  named = (named,) if isinstance(named, str) else named
  assert any(n in failed for n in named) and str(tmp_path / "2") in failed
  assert any("restored checkpoint step 1" in w and "[2]" in w for w in warnings)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_every_checkpoint_corrupt_is_one_error_naming_each_step(tmp_path):
  with Checkpointer(tmp_path) as checkpointer:
    for step in (1, 2, 3):
      checkpointer.save(step, _state(seed=step, hidden=64), {})
  _flip_16_bytes(_data_files(tmp_path / "3")[0])
  _truncate(_data_files(tmp_path / "2")[0])
  (tmp_path / "1" / "meta" / "metadata").write_text("not json")
  with Checkpointer(tmp_path) as checkpointer:
    with pytest.raises(CorruptCheckpoint) as info:
      checkpointer.restore(abstract_state=_state(hidden=64))
  error = info.value
  assert isinstance(error, ValueError) and sorted(error.failures) == [1, 2, 3]
  message = str(error)
  assert "\n" not in message and str(tmp_path) in message and "steps [1, 2, 3]" in message
  # Flipped bytes fail the checksum, or fail first in decompression when the storage layer
  # compresses the arrays (tensorstore's zstd in newer installs): either way step 3 is named.
  assert "step 3: " in message and ("checksum mismatch" in message
                                    or "reading arrays" in message)
  assert "step 1: " in message and "meta/metadata" in message
  # Asked for by step, a corrupt checkpoint is an error too (no fallback).
  with Checkpointer(tmp_path) as checkpointer:
    with pytest.raises(CorruptCheckpoint, match="step 2: "):
      checkpointer.restore(2, abstract_state=_state(hidden=64))


def test_non_finite_state_is_never_written(tmp_path, caplog):
  state = _state()
  bad = jax.tree.map(lambda x: x, state)
  bad["params"]["layer"]["w"] = bad["params"]["layer"]["w"].at[0, 1].set(jnp.nan)
  with Checkpointer(tmp_path, max_to_keep=1) as checkpointer:
    assert checkpointer.save(1, state, {})
    assert not checkpointer.save(2, bad, {}, force=True)
    assert checkpointer.all_steps() == [1]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["1"]
  assert "not saving checkpoint step 2" in caplog.text and "params.layer.w" in caplog.text


def test_rotation_never_deletes_the_newest_verified_checkpoint(tmp_path):
  with Checkpointer(tmp_path) as checkpointer:
    checkpointer.save(1, _state(seed=1), {})
  # Saves that are not read back are not verified: rotation keeps step 1, which restore
  # verified, besides the newest max_to_keep.
  with Checkpointer(tmp_path, max_to_keep=1, verify_saves=False) as checkpointer:
    checkpointer.restore(abstract_state=_state())
    for step in (2, 3, 4):
      assert checkpointer.save(step, _state(seed=step), {})
    assert checkpointer.all_steps() == [1, 4] and checkpointer.last_verified_step == 1
  # With read-back, each save is verified and becomes the one kept.
  with Checkpointer(tmp_path, max_to_keep=1) as checkpointer:
    assert checkpointer.save(5, _state(seed=5), {})
    assert checkpointer.all_steps() == [5] and checkpointer.last_verified_step == 5


def test_a_save_that_does_not_read_back_is_set_aside_and_rotates_nothing(tmp_path, caplog,
                                                                          monkeypatch):
  with Checkpointer(tmp_path, max_to_keep=1) as checkpointer:
    assert checkpointer.save(1, _state(seed=1), {})
    # Storage that returns other bytes than were written, from now on.
    read = checkpointer._read_arrays
    monkeypatch.setattr(checkpointer, "_read_arrays", lambda step, item: jax.tree.map(
        lambda x: x if x is ... else x + 1, read(step, item)))
    assert not checkpointer.save(2, _state(seed=2), {})
    assert checkpointer.all_steps() == [1] and checkpointer.last_verified_step == 1
  assert (tmp_path / "2.corrupt").is_dir()
  assert "checkpoint step 2" in caplog.text and "did not read back intact" in caplog.text
  assert "checksum mismatch" in caplog.text


def test_digest_matches_a_plain_python_reference():
  """The digest formula, element by element in Python integers, against both the jitted
  (device) and the numpy implementation, for each dtype a train state holds."""
  def reference(words):
    mask = 0xFFFFFFFF
    def mix(h):
      h ^= h >> 16
      h = (h * 0x85EBCA6B) & mask
      h ^= h >> 13
      h = (h * 0xC2B2AE35) & mask
      return h ^ (h >> 16)
    low = high = 0
    for i, w in enumerate(words):
      low += mix(w ^ mix((i * 0x9E3779B9 + 0x7F4A7C15) & mask))
      high += mix((((w + 0x632BE5AB) & mask) * 0x2C1B3C6D & mask) ^ mix(i ^ 0x5BD1E995))
    return low & mask, high & mask

  rng = np.random.default_rng(0)
  arrays = [rng.standard_normal((3, 5)).astype(np.float32),
            np.asarray(rng.standard_normal(7), jnp.bfloat16),
            rng.integers(-9, 9, (2, 2, 3)).astype(np.int32), np.array(5, np.uint32),
            rng.random(6) > 0.5]
  for x in arrays:
    words = [int(w) for w in np.ascontiguousarray(x).reshape(-1).view(
        {1: np.uint8, 2: np.uint16, 4: np.uint32}[x.dtype.itemsize])]
    low, high = reference(words)
    assert checkpoint_digests.digest_numpy(x)[:2] == (low, high), x.dtype
    (device_low, device_high, finite), = jax.jit(checkpoint_digests.digest_arrays)([jnp.asarray(x)])
    assert (int(device_low), int(device_high)) == (low, high) and bool(finite), x.dtype
  # Moving a value, or one bit of it, changes the digest.
  x = arrays[0]
  flipped = x.copy()
  flipped.view(np.uint32)[1, 2] ^= 1
  assert len({checkpoint_digests.digest_numpy(y)[:2] for y in (x, x.T.copy(), flipped)}) == 3


def test_restore_names_entries_missing_from_an_older_state_tree(tmp_path):
  old = _state()
  with Checkpointer(tmp_path) as checkpointer:
    checkpointer.save(1, old, {})
    new = dict(old, grad_norms=jnp.zeros(32))
    with pytest.raises(ValueError, match=r"missing from the checkpoint: \['grad_norms'\]"):
      checkpointer.restore(abstract_state=new)
