#!/usr/bin/env bash
# The prepared accelerator check: sampler and train-step speed in bf16 on a Qwen2.5-0.5B-shaped
# model (random weights), on whatever accelerator JAX finds (GPU or TPU).
#
#   bash benchmarks/accelerator_check.sh            # from the repository root, after set-up
#
# Prints the device, then two tables from benchmarks/bench_peers.py (tokens/s, and the share
# of the matmul-bound rate computed from the bf16 matmul peak measured on the same device):
# one with the reference attention ("xla"), one with jax.nn.dot_product_attention (cuDNN's
# fused kernel on a GPU), and on a TPU a third with the Pallas kernels ("splash": splash
# attention for prefill and training, the paged cache for decode). Rollout: 32 prompts x 8
# samples, 256-token prompts, 512 new tokens; train steps: 16 rows of 256 + 768 tokens. About
# 5 minutes on one H200, most of it compiling.
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import jax
print("jax", jax.__version__, "backend", jax.default_backend(), jax.devices())
PY
backend="$(python -c 'import jax; print(jax.default_backend())')"
if [ "$backend" = "cpu" ]; then
  echo "no accelerator found: this check is meant for a GPU or TPU machine" >&2
  exit 1
fi
common=(--model=qwen2.5-0.5b --dtype=bfloat16 --peers= --prompts=32 --group=8 --prompt=256
        --new=512 --train-rows=16 --completion=768 --repeats=3)
python -m benchmarks.bench_peers "${common[@]}" --attention=xla "$@"
python -m benchmarks.bench_peers "${common[@]}" --attention=dot_product_attention \
  --what=prefill,train "$@"
if [ "$backend" = "tpu" ]; then
  python -m benchmarks.bench_peers "${common[@]}" --attention=splash \
    --what=generate,prefill,train "$@"
fi
