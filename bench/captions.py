"""Captioning throughput of the local transformers backend on the smoke models: batch 1 vs batched.

    .venv/bin/python bench/captions.py [--clips 32] [--frames 4] [--tokens 24] [--batches 1,8,16] [--threads 1]
                                       [--rounds 2]

Captions `--clips` synthetic clips (`--frames` 32x32 JPEG frames each) with the tiny random LLaVA
(SigLIP + Llama) through `ClipCaptioner`, once per batch size, `--rounds` times in interleaved
order (the best round counts: the machine is shared), and prints clips/s, generated tokens/s and the
ratio to batch 1. Also times JSON-schema-constrained summaries with the tiny Qwen2 LLM at batch 1
and batched. Target: batched >= 3x batch 1 (clips/s).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _frames(n: int, seed: int) -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
        out.append(buf.getvalue())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--batches", default="1,8,16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--models-dir", default=os.path.join(tempfile.gettempdir(), "longvila-bench-models"))
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    a = ap.parse_args(argv)

    from curation.captioning.captioner import ClipCaptioner, ClipInput
    from curation.captioning.local import LocalChatBackend
    from curation.captioning.smoke_models import ensure_smoke_models
    from curation.captioning.types import ChatRequest

    paths = ensure_smoke_models(a.models_dir)
    batches = [int(b) for b in a.batches.split(",")]
    clips = [ClipInput(i, 2.0 * i, 2.0 * i + 2, _frames(a.frames, i)) for i in range(a.clips)]
    vlm = {b: LocalChatBackend(paths.vlm, batch_size=b, num_threads=a.threads) for b in batches}
    # warm-up (first generate pays one-off costs)
    ClipCaptioner(vlm[batches[0]], max_new_tokens=4).caption_clips(clips[:2])
    best: dict[int, tuple[float, int]] = {}
    for _ in range(a.rounds):
        for b in batches:
            cap = ClipCaptioner(vlm[b], max_new_tokens=a.tokens)
            t0 = time.perf_counter()
            res = cap.caption_clips(clips)
            dt = time.perf_counter() - t0
            assert all(r.ok or r.error_kind == "rejected" for r in res), [r.error for r in res if not r.ok][:3]
            toks = sum(r.tokens for r in res)
            if b not in best or dt < best[b][0]:
                best[b] = (dt, toks)

    # JSON-schema-constrained summaries with the LLM (grammar-masked decoding), batch 1 vs batched
    from curation.captioning.prompts import load_prompt

    schema = load_prompt("video_summary").schema
    llm_b = {b: LocalChatBackend(paths.llm, batch_size=b, num_threads=a.threads) for b in (1, max(batches))}
    reqs = [ChatRequest(messages=[{"role": "user", "content": f"Summarise video {i}: a person walks."}],
                        max_new_tokens=64, json_schema=schema) for i in range(16)]
    llm_b[1].chat(reqs[:1])
    llm_best: dict[int, tuple[float, int]] = {}
    for _ in range(a.rounds):
        for b, be in llm_b.items():
            t0 = time.perf_counter()
            reps = be.chat(reqs)
            dt = time.perf_counter() - t0
            toks = sum(r.completion_tokens for r in reps)
            if b not in llm_best or dt < llm_best[b][0]:
                llm_best[b] = (dt, toks)

    base = a.clips / best[batches[0]][0]
    lines = [
        f"clips={a.clips} frames/clip={a.frames} max_new_tokens={a.tokens} torch_threads={a.threads} "
        f"rounds={a.rounds} (best)",
        "",
        "| workload | batch | seconds | clips/s | gen tokens/s | speed-up vs batch 1 |",
        "|---|---|---|---|---|---|",
    ]
    for b in batches:
        dt, toks = best[b]
        lines.append(f"| VLM clip captions | {b} | {dt:.2f} | {a.clips / dt:.1f} | {toks / dt:.0f} "
                     f"| {a.clips / dt / base:.2f}x |")
    lbase = len(reqs) / llm_best[1][0]
    for b, (dt, toks) in llm_best.items():
        lines.append(f"| LLM JSON-schema summaries | {b} | {dt:.2f} | {len(reqs) / dt:.1f} (replies/s) "
                     f"| {toks / dt:.0f} | "
                     f"{len(reqs) / dt / lbase:.2f}x |")
    top = max(a.clips / best[b][0] for b in batches) / base
    verdict = "MET" if top >= 3.0 else "MISSED"
    lines += ["", f"target batched >= 3x batch 1 (clip captions): best {top:.2f}x -> {verdict}"]
    text = "\n".join(lines)
    print(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
