"""One process of the multi-host test (tests/test_multihost.py starts it; not a test itself).

    python tests/multihost_worker.py WORKDIR OUT_JSON

runs `main.run` in RL mode on a tiny testbed config over a (data 1, fsdp 2, tensor 2) mesh,
then in evaluate mode on the checkpoint it wrote.
With JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID in the environment it is one
of several processes (`config.distributed` picks them up); without, a single process. It
records how many completions this process's verifier graded, and process 0 writes the final
parameters (gathered from every process) to OUT_JSON's .npz sibling.
"""

import json
import pathlib
import sys

import jax
import numpy as np
from jax.experimental import multihost_utils

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from agpo_jax import configs, main  # noqa: E402
from agpo_jax.verifiers.inline import InlineVerifier  # noqa: E402


def tiny_config():
  cfg = configs.load_config_file(str(REPO / "configs" / "default.py"))
  cfg.mode = "rl"
  cfg.model.num_layers = 1
  cfg.train.steps = 2
  cfg.train.batch_prompts = 8
  cfg.train.checkpoint_every = 2
  cfg.sampling.num_samples = 4
  # Adam with a large epsilon moves each weight by ~lr * gradient: a gradient that differs in
  # its last bits between device layouts cannot flip an update's sign (as eps=1e-8 could).
  cfg.optim.lr = 1e-2
  cfg.optim.eps = 1.0
  cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor = 1, 2, 2
  return cfg


def main_(workdir: str, out: str) -> None:
  graded = []
  original = InlineVerifier.grade

  def counting(self, completions, references):
    graded.append(len(completions))
    return original(self, completions, references)

  InlineVerifier.grade = counting
  result = main.run(tiny_config(), workdir)
  InlineVerifier.grade = original
  params = multihost_utils.process_allgather(result["params"], tiled=True)
  # Then evaluate the trained checkpoint: 7 problems (padded to 8 to split over 2 processes).
  cfg = tiny_config()
  cfg.mode = "evaluate"
  cfg.eval.max_problems, cfg.eval.n, cfg.eval.samples_per_call = 7, 4, 4
  main.run(cfg, workdir)
  record = {"process": jax.process_index(), "processes": jax.process_count(),
            "devices": jax.device_count(), "graded": graded}
  if jax.process_index() == 0:
    flat = {jax.tree_util.keystr(p): np.asarray(x)
            for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(pathlib.Path(out).with_suffix(".npz"), **flat)
  pathlib.Path(out).with_name(f"{pathlib.Path(out).stem}-{jax.process_index()}.json").write_text(
      json.dumps(record))


if __name__ == "__main__":
  main_(sys.argv[1], sys.argv[2])
