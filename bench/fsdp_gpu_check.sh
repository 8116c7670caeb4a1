#!/bin/bash
# Device check of the FSDP2 trainer on one GPU, one command (a few minutes on an H100); results under $OUT:
# environment; bench/fsdp_memory.py (measured step memory of the 1.5B profile vs training.plan, without and
# with CPU offload); a bf16 + CPU-offload + checkpointing smoke run killed after step 3, resumed, and compared
# with an uninterrupted run. The sitecustomize shims only fill in APIs missing from an older torch/transformers
# on the device (the project requires torch >= 2.13); they are printed when used (world 1 needs neither).
OUT=${OUT:-bench/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv
python -c "import sys,torch,transformers;print(sys.version.split()[0],'torch',torch.__version__,'tf',transformers.__version__,torch.cuda.is_available())"
python -c "import peft,safetensors,yaml,pyarrow,fsspec,tokenizers,PIL,numpy;print('deps ok')" 2>&1 | tail -1
mkdir -p /tmp/shim
cat > /tmp/shim/sitecustomize.py <<'PY'
try:
    from torch.distributed.fsdp import FSDPModule
    if not hasattr(FSDPModule, "set_reduce_scatter_unused_params"):
        FSDPModule.set_reduce_scatter_unused_params = lambda self, v, *, recurse=True: None
        print("SHIM set_reduce_scatter_unused_params (no-op: world 1 only)")
    if not hasattr(FSDPModule, "set_force_sum_reduction_for_comms"):
        FSDPModule.set_force_sum_reduction_for_comms = lambda self, v: None
        print("SHIM set_force_sum_reduction_for_comms")
    from transformers import PreTrainedModel
    if not hasattr(PreTrainedModel, "activation_checkpointing_enable"):
        PreTrainedModel.activation_checkpointing_enable = lambda self, activation_checkpointing_kwargs=None: \
            self.gradient_checkpointing_enable(gradient_checkpointing_kwargs=activation_checkpointing_kwargs)
        print("SHIM activation_checkpointing_enable")
except Exception as e:
    print("shim failed", e)
PY
export PYTHONPATH=/tmp/shim:$PWD OMP_NUM_THREADS=4 PYTHONUNBUFFERED=1
timeout 220 python bench/fsdp_memory.py --tokens 4096 8192 16384 --out $OUT/mem.json 2>&1 | grep -v Warning | tail -12
timeout 160 python bench/fsdp_memory.py --tokens 8192 16384 32768 --cpu-offload --out $OUT/mem_off.json 2>&1 | grep -v Warning | tail -10
C="--profile smoke --max-steps 4 --checkpoint-every 1 --dtype bfloat16 --cpu-offload --gradient-checkpointing --no-export --log-every 0"
R="python -m torch.distributed.run --standalone --nproc-per-node 1 -m training.train"
timeout 90 $R $C --output-dir /tmp/t1 --metrics-out $OUT/killed.jsonl --kill-after-step 3 2>&1 | grep -E "^\[train\]|Error" | tail -4
timeout 90 $R $C --output-dir /tmp/t1 --metrics-out $OUT/killed.jsonl --resume 2>&1 | grep -E "^\[train\]|Error" | tail -5
timeout 90 $R $C --output-dir /tmp/t2 --metrics-out $OUT/full.jsonl 2>&1 | grep -E "Error" | tail -3
python -c "
import json,sys
f=lambda p:[round(json.loads(l)['loss'],6) for l in open(p)]
print('resumed', f('$OUT/killed.jsonl')); print('full   ', f('$OUT/full.jsonl'))"
