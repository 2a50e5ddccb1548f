"""Mesh, logical-axis rules and sharded parity.

The multi-device checks need 8 fake CPU devices, which must be requested before JAX starts, so
they run in one subprocess (one JAX start, a few compiles) that prints its findings as JSON;
the tests below assert on them.
"""

import functools
import textwrap

import pytest
from jax.sharding import PartitionSpec as P

from agpo_jax import defaults
from agpo_jax.models import config as model_config
from agpo_jax.models import transformer
from agpo_jax.sharding import multihost, rules
from tests import fake_devices

MESHES = ((8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2))
RTOL, ATOL = 1e-5, 1e-6  # sharded vs single-device: only reduction order differs

_SCRIPT = textwrap.dedent(r"""
    import json
    import tempfile
    import jax
    import numpy as np
    import optax
    from agpo_jax import checkpointing, sampling
    from agpo_jax.algorithms import loss_config
    from agpo_jax.models import transformer
    from agpo_jax.models.config import PRESETS
    from agpo_jax import defaults
    from agpo_jax.sharding import multihost, rules
    from agpo_jax.train import rl_step
    from agpo_jax.train import state as state_lib
    from agpo_jax.train.state_io import restore_state, save_state
    from tests.rl_batches import random_rl_batch
    import dataclasses

    RTOL, ATOL = %(rtol)r, %(atol)r
    MESHES = %(meshes)r
    CFG = dataclasses.replace(PRESETS["testbed"], num_layers=1)
    out = {"num_devices": jax.device_count(), "meshes": {}}

    def close(a, b):
      return all(np.allclose(np.asarray(x), np.asarray(y), rtol=RTOL, atol=ATOL)
                 for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))

    keys = {impl: jax.random.key(0, impl=impl) for impl in ("threefry2x32", "rbg")}
    reference = {impl: transformer.init_params(CFG, k) for impl, k in keys.items()}
    # Plain SGD, so new params differ exactly by the gradient difference. AdamW's first update
    # is about lr * sign(grad): a gradient that is 1e-9 on one device count and -1e-9 on
    # another moves a weight by 2 * lr, which would say nothing about the sharding.
    tx = optax.sgd(1.0)
    adamw = state_lib.make_optimizer(defaults.optim_config(), 10)
    step_fn = rl_step.make_rl_step(CFG, loss_config(), defaults.rl_config(), 1.0)
    batch = random_rl_batch()
    ref_state, ref_metrics = step_fn(
        state_lib.TrainState.create(transformer.init_params(CFG, keys["rbg"]), tx), batch)
    sampler = sampling.Sampler(CFG, pad_id=0)
    prompts = [[3, 4, 5], [6, 7], [8, 9, 10, 11], [12]]
    greedy = sampling.SamplingParams(temperature=0.0, max_new_tokens=6)
    ref_rollout = sampler.generate(reference["rbg"], prompts, 2, jax.random.key(1), greedy)

    def spec(tree):
      return jax.tree.map(lambda x: list(x.sharding.spec), tree)

    states = {}

    for shape in MESHES:
      mesh = rules.make_mesh(dict(zip(rules.MESH_AXES, shape)))
      res = out["meshes"][str(shape)] = {"mesh": dict(mesh.shape)}
      # rbg (configs/default.py's prng_impl) on every mesh, threefry on one: each init compiles.
      impls = keys if shape == (2, 2, 2) else ("rbg",)
      params = {impl: rules.init_params_sharded(CFG, keys[impl], mesh) for impl in impls}
      res["specs"] = spec(params["rbg"])
      res["init_equal"] = {impl: all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
                                     zip(jax.tree.leaves(params[impl]),
                                         jax.tree.leaves(reference[impl]), strict=True))
                           for impl in impls}
      rollout = sampler.generate(params["rbg"], prompts, 2, jax.random.key(1), greedy)
      res["greedy_equal"] = (np.array_equal(rollout.tokens, ref_rollout.tokens)
                             and np.array_equal(rollout.lengths, ref_rollout.lengths))
      res["greedy_logprobs_close"] = close(rollout.logprobs, ref_rollout.logprobs)
      # The prompts' KV cache the sharded sampler creates, read off its compiled prefill.
      prefill_fn, _ = sampling.Sampler(CFG, 0, mesh=mesh)._sharded_fns(
          8, 2, 8, greedy)
      res["cache_specs"] = [list(s.spec) for s in jax.tree.leaves(
          prefill_fn.lower(params["rbg"], jax.ShapeDtypeStruct((8, 8), np.int32),
                           jax.ShapeDtypeStruct((8, 8), bool)).compile().output_shardings[0])]
      # The train step jitted with explicit shardings: state created sharded, batch fed as
      # each process's rows (all of them here), outputs laid out by the rules.
      shardings = state_lib.step_shardings(CFG, tx, mesh)
      sharded_step = rl_step.make_rl_step(CFG, loss_config(), defaults.rl_config(), 1.0,
                                             shardings)
      rows = batch.tokens.shape[0]
      res["process_rows"] = [multihost.process_rows(rows, mesh).start,
                             multihost.process_rows(rows, mesh).stop]
      sharded_batch = multihost.host_to_global(batch, mesh, rows)
      res["batch_spec"] = list(sharded_batch.tokens.sharding.spec)
      res["batch_roundtrip"] = bool(np.array_equal(
          multihost.global_to_host(sharded_batch.tokens), batch.tokens))
      state = state_lib.create_state(params["rbg"], tx, shardings)
      state, metrics = sharded_step(state, sharded_batch)
      res["loss"] = [float(metrics["loss"]), float(ref_metrics["loss"])]
      res["grad_norm"] = [float(metrics["grad_norm"]), float(ref_metrics["grad_norm"])]
      res["step_params_close"] = close(state.params, ref_state.params)
      # AdamW's state created in place: its moments follow their parameters.
      adam_state = state_lib.create_state(params["rbg"], adamw,
                                           state_lib.step_shardings(CFG, adamw, mesh))
      res["state_specs"] = {"params": spec(state.params), "step": list(state.step.sharding.spec),
                            "opt_embed": [list(x.sharding.spec) for x in jax.tree.leaves(
                                adam_state.opt_state)
                                if x.ndim == 2 and x.shape[0] == CFG.vocab_size]}
      states[shape] = state

    # Temporary memory of the compiled step, pure data parallelism vs pure FSDP, on a batch
    # big enough for activations to dominate: FSDP must split rows like data parallelism.
    big = random_rl_batch(rows=64, prompt=8, completion=24)
    out["temp_bytes"] = {}
    for shape in ((8, 1, 1), (1, 8, 1)):
      mesh = rules.make_mesh(dict(zip(rules.MESH_AXES, shape)))
      shardings = state_lib.step_shardings(CFG, tx, mesh)
      step_fn = rl_step.make_rl_step(CFG, loss_config(), defaults.rl_config(), 1.0,
                                        shardings)
      state_shape = jax.eval_shape(lambda: state_lib.TrainState.create(
          transformer.init_params(CFG, keys["rbg"]), tx))
      compiled = step_fn.lower(state_shape, multihost.host_to_global(big, mesh, 64)).compile()
      out["temp_bytes"][str(shape)] = compiled.memory_analysis().temp_size_in_bytes

    # A checkpoint written under one mesh, restored under each of the others.
    with tempfile.TemporaryDirectory() as tmp:
      with checkpointing.Checkpointer(tmp) as ckpt:
        save_state(ckpt, states[(1, 8, 1)], {"iterator": [0, 0]})
      out["restored"] = {}
      for shape in MESHES:
        mesh = rules.make_mesh(dict(zip(rules.MESH_AXES, shape)))
        target = state_lib.create_state(
            rules.init_params_sharded(CFG, jax.random.key(5, impl="rbg"), mesh), tx,
            state_lib.step_shardings(CFG, tx, mesh))
        with checkpointing.Checkpointer(tmp) as ckpt:
          restored, _ = restore_state(ckpt, target, {"iterator": [0, 0]})
        out["restored"][str(shape)] = {
            "equal": all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
                jax.tree.leaves(restored), jax.tree.leaves(states[(1, 8, 1)]), strict=True)),
            "specs_match": jax.tree.leaves(spec(restored.params)) == jax.tree.leaves(
                spec(target.params)),
            "embed_spec": list(restored.params["embed"].sharding.spec)}

    mesh = rules.make_mesh(dict(data=2, fsdp=2, tensor=2))
    errors = {}
    for name, fn in [("mesh", lambda: rules.make_mesh(dict(data=3, fsdp=-1, tensor=1))),
                     ("batch", lambda: rules.shard_batch(np.zeros((6, 2)), mesh))]:
      try:
        fn()
        errors[name] = None
      except ValueError as e:
        errors[name] = str(e)
    out["errors"] = errors
    out["replicated_spec"] = list(rules.replicate(np.zeros((4, 4)), mesh).sharding.spec)
    out["ref_loss"] = float(ref_metrics["loss"])
    print("RESULT " + json.dumps(out))
""") % dict(rtol=RTOL, atol=ATOL, meshes=MESHES)


@functools.cache
def _multi_device_results():
  return fake_devices.run(_SCRIPT)


def _mesh(shape):
  return _multi_device_results()["meshes"][str(shape)]


# Expected specs, written out by hand from the rule table for the 1-layer testbed model
# (vocab 16, d_model 64, 4 query and 4 KV heads of 16, mlp 256). The leading None of block
# weights is the scanned `layers` axis.
def _expected_specs(shape):
  heads = None if 4 % shape[2] else "tensor"  # 4 heads do not split over tensor=8
  return {
      ("embed",): ["tensor", "fsdp"],
      ("lm_head",): ["fsdp", "tensor"],
      ("final_norm", "scale"): [None],
      ("layers", "mlp", "up_proj"): [None, "fsdp", "tensor"],
      ("layers", "mlp", "down_proj"): [None, "tensor", "fsdp"],
      ("layers", "attn", "q_proj"): [None, "fsdp", heads, None],
      ("layers", "attn", "k_proj"): [None, "fsdp", heads, None],
      ("layers", "attn", "o_proj"): [None, heads, None, "fsdp"],
      ("layers", "attn_norm", "scale"): [None, None],
  }


def _leaf(tree, path):
  for key in path:
    tree = tree[key]
  return tree


@pytest.mark.parametrize("shape", MESHES)
def test_sharded_init_follows_the_rules_and_matches_unsharded_init(shape):
  res = _mesh(shape)
  assert res["mesh"] == dict(zip(rules.MESH_AXES, shape))
  for path, expected in _expected_specs(shape).items():
    assert _leaf(res["specs"], path) == expected, path
  assert res["init_equal"]["rbg"]
  if shape == (2, 2, 2):
    assert res["init_equal"]["threefry2x32"]


@pytest.mark.parametrize("shape", MESHES)
def test_sharded_rl_step_matches_single_device(shape):
  res = _mesh(shape)
  assert res["batch_spec"] == [["data", "fsdp"]]
  sharded_loss, single_loss = res["loss"]
  assert single_loss != 0.0
  assert sharded_loss == pytest.approx(single_loss, rel=RTOL, abs=ATOL)
  sharded_norm, single_norm = res["grad_norm"]
  assert sharded_norm == pytest.approx(single_norm, rel=RTOL) and single_norm > 0
  assert res["step_params_close"]


@pytest.mark.parametrize("shape", MESHES)
def test_jitted_step_returns_state_laid_out_by_the_rules(shape):
  res = _mesh(shape)
  specs = res["state_specs"]
  for path, expected in _expected_specs(shape).items():
    assert _leaf(specs["params"], path) == expected, path
  assert specs["step"] == []  # counters replicated
  # Adam's two moments of the embedding are sharded exactly like the embedding.
  assert specs["opt_embed"] == [_expected_specs(shape)[("embed",)]] * 2  # mu, nu
  assert res["process_rows"] == [0, 8] and res["batch_roundtrip"]


@pytest.mark.parametrize("shape", MESHES)
def test_kv_cache_is_created_sharded(shape):
  res = _mesh(shape)
  heads = None if 4 % shape[2] else "tensor"
  rows = ["data", "fsdp"]
  per_layer = [[rows, heads, None, None]]  # the subprocess model has one layer
  assert res["cache_specs"] == (per_layer  # k of each layer, [rows, kv heads, head dim, slot]
                                + per_layer  # v of each layer, [rows, kv heads, slot, head dim]
                                + [[rows, None]])  # valid


def test_fsdp_splits_activations_by_rows_like_data_parallelism():
  temp = _multi_device_results()["temp_bytes"]
  # Without the activation constraint the FSDP step needed 5.6x the data-parallel one.
  assert temp[str((1, 8, 1))] <= 1.25 * temp[str((8, 1, 1))], temp


def test_checkpoint_saved_under_one_mesh_restores_under_another():
  restored = _multi_device_results()["restored"]
  for shape in MESHES:
    res = restored[str(shape)]
    assert res["equal"], shape
    assert res["specs_match"], shape  # laid out for the restoring mesh, not the saving one


@pytest.mark.parametrize("shape", MESHES)
def test_greedy_sampling_with_sharded_params_matches_unsharded(shape):
  res = _mesh(shape)
  assert res["greedy_equal"]
  assert res["greedy_logprobs_close"]


def test_make_mesh_and_shard_batch_reject_sizes_that_do_not_divide():
  results = _multi_device_results()
  assert results["num_devices"] == 8
  assert "mesh.data=3" in results["errors"]["mesh"] and "8 devices" in results["errors"]["mesh"]
  assert "6 rows" in results["errors"]["batch"]
  assert results["replicated_spec"] == []


def test_mesh_shape_resolves_minus_one_and_rejects_bad_sizes():
  assert rules.mesh_shape(defaults.mesh_config(), 8) == (1, 8, 1)
  assert rules.mesh_shape(dict(data=2, fsdp=-1, tensor=2), 8) == (2, 2, 2)
  for bad in (dict(data=3, fsdp=-1, tensor=1), dict(data=2, fsdp=2, tensor=1),
              dict(data=-1, fsdp=-1, tensor=1), dict(data=0, fsdp=-1, tensor=1)):
    with pytest.raises(ValueError, match="mesh.data"):
      rules.mesh_shape(bad, 8)


def test_every_logical_axis_has_a_rule():
  table = dict(rules.LOGICAL_AXIS_RULES)
  assert len(table) == len(rules.LOGICAL_AXIS_RULES)  # one entry per name
  cfg = model_config.ModelConfig(vocab_size=16, num_layers=1, d_model=8, num_heads=2,
                                 num_kv_heads=1, head_dim=4, mlp_dim=8, qkv_bias=True,
                                 qk_norm=True)
  names = {name for spec in transformer.param_logical_axes(cfg).values()
           for name in _flatten_names(spec)}
  names |= set(transformer.K_CACHE_AXES) | {"batch", "seq"}
  assert names <= set(table), names - set(table)


def _flatten_names(tree):
  if isinstance(tree, P):
    return [n for n in tree if n is not None]
  return [n for sub in tree.values() for n in _flatten_names(sub)]
