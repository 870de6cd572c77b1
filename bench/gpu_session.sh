#!/usr/bin/env bash
# Everything this project still needs a GPU for, as one command for one GPU machine (one H100 or
# H200, about 10 minutes; a bare machine with torch, triton, transformers, accelerate and peft but
# no `datasets` and no network is enough). Prepare on a machine with network access, then run:
#
#   make gpu-wheels                        # datasets, dill, multiprocess wheels into .whl/ (ignored)
#   bash bench/gpu_session.sh              # on the GPU machine, with .whl/ copied next to it
#
# then copy the results folder into bench/results/ and commit it. Each step has its own time limit
# and writes its results as it goes, so a step that overruns still leaves the earlier ones (and
# attention_gpu.json keeps every measurement made before a cut).
#
# Steps (in priority order):
#   1. the GPU tests of the Triton and FlexAttention kernels (compiled, bf16) and of the triton
#      backend's first-use self-check, with a failed self-check an error (not a silent fallback)
#                                                                            -> gpu_tests.xml
#   2. the Triton kernels on the q/k/v views of real Llama / GPT-NeoX / GPT-2 attention modules
#      (fused-qkv chunks, slices, expanded keys; float32, tf32x3 dots), compiled  -> gpu_strides.xml
#   3. bench/attention_gpu.py (attention speed and memory vs SDPA, decoding, 125M training tokens/s)
#                                                           -> attention_gpu.json, attention_gpu.png
#   4. bench/train_gpu.py (the 125M recipe at L = 4096: tokens/s and peak memory)  -> train_gpu.json
# Until this script has passed on a GPU and its results are committed, the README lists the GPU
# paths as compile-checked only. The run's log (versions, nvidia-smi, every step's output) is
# session.log.
# Environment: OUT (results folder, default bench/results/gpu_session), STEP_LIMITS="tests strides
# attention train" in seconds (default "100 50 240 150").
set -u
OUT=${OUT:-bench/results/gpu_session}
mkdir -p "$OUT"
LOG="$OUT/session.log"
read -r LIMIT_TESTS LIMIT_STRIDES LIMIT_ATTENTION LIMIT_TRAIN <<< "${STEP_LIMITS:-100 50 240 150}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

exec > >(tee -a "$LOG") 2>&1
echo "== $(date -u) gpu_session.sh in $PWD"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { echo "wheel install failed"; exit 1; }
    export PYTHONPATH="$PYTHONPATH:/tmp/site"  # after the machine's own packages: only the missing ones come from here
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 - <<'PY'
import importlib
for name in ("torch", "triton", "transformers", "accelerate", "peft", "datasets", "pyarrow", "hf_wavepos"):
    try:
        module = importlib.import_module(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as error:  # noqa: BLE001 - report and go on: the steps say what they need
        print(f"{name} MISSING ({type(error).__name__}: {error})")
import torch
print("cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
PY

step() {  # step NAME LIMIT COMMAND...
    local name=$1 limit=$2; shift 2
    echo "== $(date -u +%T) step $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout --signal=TERM --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "== step $name: exit $rc after $((SECONDS - start)) s$([ $rc -eq 124 ] && echo ' (time limit)')"
}

SELF_CHECK_FAILS="error::hf_wavepos.attention.triton.selfcheck.SelfCheckWarning"
step tests "$LIMIT_TESTS" python3 -m pytest -q -m gpu -p no:cacheprovider --maxfail=3 -W "$SELF_CHECK_FAILS" \
    tests/attention/test_triton.py tests/attention/test_flex.py tests/attention/test_triton_selfcheck.py \
    --junitxml="$OUT/gpu_tests.xml"
step strides "$LIMIT_STRIDES" python3 -m pytest -q -p no:cacheprovider --maxfail=3 \
    tests/attention/test_triton_strides.py --junitxml="$OUT/gpu_strides.xml"
step attention "$LIMIT_ATTENTION" python3 bench/attention_gpu.py --out-dir "$OUT" --flex-lengths 16384 --repeats 3
step train "$LIMIT_TRAIN" python3 bench/train_gpu.py --out "$OUT/train_gpu.json" --work /tmp/bench_train
echo "== $(date -u +%T) done; files in $OUT:"
ls -la "$OUT"
