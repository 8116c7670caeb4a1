"""CPU memory targets of long context, asserted on every CI run (issue 9). Each case runs in a fresh
subprocess and measures the growth of its peak RSS (VmHWM reset through /proc/self/clear_refs) while the
computation runs, so earlier allocations, pytest and allocator caches do not count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                                                   reason="needs Linux /proc (peak RSS reset)")]
GIB = 1 << 30
ROOT = Path(__file__).resolve().parents[2]


def _run(call: str) -> dict:
    code = ("import json, torch; torch.set_num_threads(2); from training.sp import testing; "
            f"print(json.dumps(testing.{call}))")
    env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_sp_attention_32k_tokens_8_documents_within_1_gib():
    """fwd+bwd of sp_attention (one process, float32, 4 query / 2 KV heads x 64, causal) over 32,768 tokens in
    8 packed documents: the old dense-mask path grew by 6.2 GiB; target <= 1 GiB."""
    r = _run("case_attention_memory(32768, 8)")
    assert r["growth"] <= 1 * GIB, r


def test_loss_8k_tokens_151936_vocab_within_1_5_gib():
    """fwd+bwd of the LM-head loss on 8,192 tokens (all supervised) with Qwen2's 151,936-token vocabulary, fp32.
    Hidden size 128 (not the 1.5B profile's 1536) keeps the three GEMMs CI-sized; the growth is one logits chunk
    (256 MiB) plus the weight gradient (V x hidden x 4 bytes). Full logits + their gradient would need 9.3 GB."""
    r = _run("case_loss_memory(8192, 151936, 128)")
    assert r["growth"] <= 1.5 * GIB, r
    assert r["growth"] < r["full_logits_bytes"] / 4, r
