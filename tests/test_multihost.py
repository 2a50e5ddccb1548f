"""Two real JAX processes (`jax.distributed`, localhost coordinator, CPU collectives over gloo)
run the RL loop together and agree with one process holding the same four devices.

Each process has 2 fake CPU devices; the mesh is (data 1, fsdp 2, tensor 2), so parameters
and optimizer state are split across the processes (fsdp) and within each (tensor). The run
goes through `main.run` exactly as `python -m agpo_jax.main` would: distributed start-up from
the standard environment variables, each process sampling and verifying its own prompts,
rewards gathered, the update on global arrays, a checkpoint written by both processes.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from agpo_jax import configs, defaults
from agpo_jax.models import transformer
from agpo_jax.models.config import resolve_model_config
from agpo_jax.tokenizers import load_tokenizer
from agpo_jax.train.rl import restore_rl_params

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "multihost_worker.py"
sys.path.insert(0, str(REPO / "tests"))
import multihost_worker  # noqa: E402


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(workdir: pathlib.Path, out: pathlib.Path, processes: int) -> list[subprocess.Popen]:
  port = _free_port()
  procs = []
  for index in range(processes):
    flags = os.environ.get("XLA_FLAGS", "")  # the session's compile flags (conftest.py)
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
        f"{flags} --xla_force_host_platform_device_count={4 // processes}").strip())
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
      env.pop(key, None)
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(processes),
                 JAX_PROCESS_ID=str(index))
    log = open(out.with_name(f"{out.stem}-{index}.log"), "w")  # noqa: SIM115
    procs.append(subprocess.Popen([sys.executable, str(WORKER), str(workdir), str(out)],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
  return procs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("multihost")
  started = {name: _start(root / name, root / f"{name}.json", n)
             for name, n in (("two", 2), ("one", 1))}
  for name, procs in started.items():
    for index, proc in enumerate(procs):
      try:
        code = proc.wait(timeout=600)
      except subprocess.TimeoutExpired:
        for p in procs:
          p.kill()
        raise
      log = (root / f"{name}-{index}.log").read_text()
      assert code == 0, f"{name} process {index} failed:\n{log[-4000:]}"
  return root


def _record(root, name, index):
  return json.loads((root / f"{name}-{index}.json").read_text())


def _metrics(root, name):
  lines = (root / name / "rl" / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def test_each_process_verifies_only_its_own_completions(runs):
  # 8 prompts x 4 samples per step, 2 steps: each of 2 processes grades 16 per step.
  for index in (0, 1):
    record = _record(runs, "two", index)
    assert record["processes"] == 2 and record["devices"] == 4
    assert record["graded"] == [16, 16]
  assert _record(runs, "one", 0)["graded"] == [32, 32]
  # ... and the logged verifier counts are reduced over both processes.
  assert [m["verifier/num_items"] for m in _metrics(runs, "two")] == [32, 32]


def test_two_processes_train_like_one(runs):
  two, one = _metrics(runs, "two"), _metrics(runs, "one")
  for a, b in zip(two, one, strict=True):
    for key in ("reward", "loss", "grad_norm", "entropy_mean", "response_length_mean"):
      assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
  assert one[0]["grad_norm"] > 0
  params_two = np.load(runs / "two.npz")
  params_one = np.load(runs / "one.npz")
  assert sorted(params_two) == sorted(params_one)
  moved = 0.0
  for key in params_one:
    np.testing.assert_allclose(params_two[key], params_one[key], rtol=1e-5, atol=1e-6,
                               err_msg=key)
  # The parameters did move (lr 1e-2): agreement is not just two copies of the init.
  init = _init_params()
  moved = max(float(np.max(np.abs(params_one[k] - v))) for k, v in init.items())
  assert moved > 1e-4


def _setup():
  cfg = multihost_worker.tiny_config()
  tokenizer = load_tokenizer(cfg.tokenizer)
  return cfg, resolve_model_config(cfg.model, tokenizer.vocab_size)


def _init_params():
  cfg, model_cfg = _setup()
  params = transformer.init_params(model_cfg, jax.random.key(cfg.seed, impl=cfg.prng_impl))
  return {jax.tree_util.keystr(p): np.asarray(x)
          for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}


def test_two_processes_evaluate_like_one(runs):
  # Evaluation splits every chunk of problems over the processes and gathers the counts;
  # process 0 alone writes the counts file.
  two = sorted((runs / "two" / "eval").glob("*.jsonl"))
  one = sorted((runs / "one" / "eval").glob("*.jsonl"))
  assert [p.name for p in two] == [p.name for p in one] and len(two) == 1
  assert two[0].name.startswith("agpo-step2_")
  records = [json.loads(line) for line in two[0].read_text().splitlines()]
  assert len(records) == 7 and all(r["n"] == 4 for r in records)
  assert two[0].read_text() == one[0].read_text()


def test_checkpoint_written_by_two_processes_restores_on_one_device(runs):
  cfg, model_cfg = _setup()
  target = transformer.init_params(model_cfg, jax.random.key(7, impl=cfg.prng_impl))
  params, step = restore_rl_params(cfg, runs / "two" / "rl", model_cfg, target)
  assert step == 2
  saved = np.load(runs / "two.npz")
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    assert leaf.sharding.is_fully_replicated and len(leaf.devices()) == 1
    np.testing.assert_array_equal(np.asarray(leaf), saved[jax.tree_util.keystr(path)])


def test_config_key_and_environment_start_distributed_and_name_missing_values():
  from agpo_jax.sharding import multihost
  cfg = defaults.distributed_config()
  assert not multihost.initialize_distributed(cfg, environ={})
  with pytest.raises(ValueError, match="distributed.num_processes"):
    multihost.initialize_distributed(cfg, environ={"JAX_COORDINATOR_ADDRESS": "h:1"})
  assert configs.load_config_file(str(REPO / "configs" / "default.py")).distributed.initialize \
      is False
