#!/bin/bash
# The device checks of issue 9 on one lent GPU, in phases that fit the session's device budget (results under $OUT):
#   bash bench/gpu_check.sh sanity   # ~2 min: environment; fused kernels vs the dense reference (bench/gpu_sanity.py);
#                                    # a small long_context run and a small FSDP step (both code paths once)
#   bash bench/gpu_check.sh full     # ~6 min: bench/long_context.py (attention 4k-128k, 1.5B step 16k-128k, longest fit)
#                                    # and the 1.5B FSDP step memory against the memory plan (bench/fsdp_memory.py)
#   bash bench/gpu_check.sh cudnn    # ~8 min: sanity of every kernel, then bench/long_context.py and the 32k profile
#                                    # with the auto kernel order (sdpa_cudnn first on Hopper; sdpa_flash if cuDNN fails)
#   bash bench/gpu_check.sh attn     # ~2 min: the attention table alone, 4k-64k (kernel choice for packed rows)
#   bash bench/gpu_check.sh 7b       # ~5 min: the 7B profile's step at SP=1, 32k tokens, checkpointing + CPU offload
# Carry the transformers wheel the project needs (>= 5.24) in .whl/ (see the device README). The sitecustomize shim
# only fills APIs missing from an older torch on the device (the project requires torch >= 2.13) and is printed when
# used; at world 1 the shimmed FSDP calls change nothing.
set -o pipefail
OUT=${OUT:-bench/out}; mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
fi
mkdir -p /tmp/shim
cat > /tmp/shim/sitecustomize.py <<'PY'
try:
    from torch.distributed.fsdp import FSDPModule
    for _name in ("set_reduce_scatter_unused_params", "set_force_sum_reduction_for_comms"):
        if not hasattr(FSDPModule, _name):
            setattr(FSDPModule, _name, lambda self, *a, **k: None)
            print("SHIM", _name, "(no-op at world 1)")
except Exception as e:  # noqa: BLE001
    print("shim failed", e)
PY
export PYTHONPATH=/tmp/shim:/tmp/site:$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=8
python3 -c "import sys,torch,transformers;print(sys.version.split()[0],'torch',torch.__version__,'transformers',\
transformers.__version__,'cuda',torch.cuda.is_available())" | tee -a "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/env.txt"
free -g | head -2 | tee -a "$OUT/env.txt"
case "$1" in
  sanity)
    timeout 90 python3 bench/gpu_sanity.py --tokens 2048 2>&1 | tee "$OUT/sanity.md"
    timeout 150 python3 bench/long_context.py --attn-sizes 8192 --step-sizes 8192 --no-fit-search \
      --out "$OUT/long_context_small.md" 2>&1 | grep -v Warning | tail -20
    timeout 90 python3 bench/fsdp_memory.py --profile longvila-1.5b-qwen2 --tokens 4096 --out "$OUT/mem_small.json" \
      2>&1 | grep -v Warning | tail -6 ;;
  full)
    timeout 420 python3 bench/long_context.py --budget-s 300 --out "$OUT/long_context.md" 2>&1 \
      | grep -v Warning | tee "$OUT/long_context.log" | tail -45
    timeout 120 python3 bench/fsdp_memory.py --profile longvila-1.5b-qwen2 --tokens 16384 32768 65536 \
      --out "$OUT/mem_1p5b.json" 2>&1 | grep -v Warning | tail -8 ;;
  cudnn)
    timeout 90 python3 bench/gpu_sanity.py --tokens 2048 2>&1 | tee "$OUT/sanity.md" \
      || { echo "sanity failed: falling back to sdpa_flash"; export LONGVILA_ATTN_KERNEL=sdpa_flash; }
    timeout 380 python3 bench/long_context.py --budget-s 300 --out "$OUT/long_context.md" 2>&1 \
      | grep -v Warning | tee "$OUT/long_context.log" | tail -45
    timeout 80 python3 bench/step_profile.py --tokens 32768 --rows 8 2>&1 | grep -v Warning \
      | tee "$OUT/step_profile.txt" | cut -c1-200 | tail -30 ;;
  attn)
    timeout 150 python3 bench/long_context.py --attn-sizes 4096 8192 16384 32768 65536 --step-sizes 16384 \
      --no-fit-search --out "$OUT/attention.md" 2>&1 | grep -v Warning | tail -30 ;;
  7b)
    timeout 290 python3 bench/fsdp_memory.py --profile longvila-7b-qwen2 --tokens 32768 --cpu-offload \
      --out "$OUT/mem_7b.json" 2>&1 | grep -v Warning | tee "$OUT/mem_7b.log" ;;
  *) echo "usage: $0 sanity|full|cudnn|attn|7b"; exit 2 ;;
esac
