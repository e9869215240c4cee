#!/usr/bin/env bash
# One NVIDIA H100/H200, under 10 minutes: what this CPU-only project cannot measure itself.
#   1. `plan` compiles the Llama 3.2 1B H100 preset's real step (cuDNN flash attention) on the
#      GPU and prints XLA's memory figures and the roofline;
#   2. the train step's MFU at the Llama 3.2 1B shapes in bf16, cuDNN attention against XLA's;
#   3. KV-cache decoding at the same shapes against transformers' generate.
# Runs from the repository root with the machine's own python3 (its JAX, Flax, Optax, Orbax,
# transformers); nothing is installed. Results go to $OUT (default /tmp/gpu_device_check).
#     bash benchmarks/gpu_device_check.sh
set -uo pipefail
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-/tmp/gpu_device_check}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep going if it fails
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  echo "== $name: exit ${PIPESTATUS[0]}"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" \
  | tee -a "$OUT/gpu.txt"
step plan 150 "$PY" -m llm_jax plan --config llama3.2-1b-h100 --slice h100-1
step train_cudnn 150 "$PY" benchmarks/train_speed.py --preset llama3.2-1b --dtype bfloat16 \
  --batch 4 --seq 2048 --attention cudnn --no-torch --steps 10 --rounds 2
step train_xla 120 "$PY" benchmarks/train_speed.py --preset llama3.2-1b --dtype bfloat16 \
  --batch 4 --seq 2048 --attention xla --no-torch --steps 10 --rounds 2
step decode 150 "$PY" benchmarks/decode_speed.py --vocab 128256 --d-model 2048 --layers 16 \
  --heads 32 --kv-heads 8 --mlp-dim 8192 --batch 1 8 --prompt-len 128 --new-tokens 64
