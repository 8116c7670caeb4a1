"""Whole-VLM MM-SP benchmark: stage-1 frame sharding of the vision tower and one training step of the
LongVILA VLM (vision tower + projector + LLM) under MM-SP, on CPU gloo processes (one thread each).

A small LongVILA model (SigLIP 4 layers hidden 128, image 64 / patch 8 -> 16 visual tokens per frame;
Qwen2 4 layers hidden 128, 4 heads, 2 KV heads) and one sample of ``--frames`` frames (default 64 ->
1,024 visual tokens plus the prompt). For SP=1 and at world sizes 2 and 4 (Ulysses, zigzag ring, 2D):

* vision CPU s/rank: CPU time of the vision tower + projector (forward + backward) on the slowest rank with
  stage-1 sharding (each rank encodes only its frames), against the same measured on the full frame set
  ("replicated": what every rank pays when only the LLM is sequence-parallel). Their ratio is the stage-1 gain;
* step CPU s (max rank): process CPU time of one forward + backward + gradient sync of the whole model on
  the slowest rank (a dedicated-core estimate: the 2-core machine is shared and world 4 oversubscribes it);
* step wall s: wall time of the step (max over ranks) as measured on this loaded machine;
* local tokens: tokens per rank after stage-2 sharding (activation memory scales with it).

Median of ``--steps`` timed steps after one warm-up step. Run::

    .venv/bin/python bench/vlm_sp.py              # 64 frames, worlds 1, 2, 4 (about a minute or two)
    .venv/bin/python bench/vlm_sp.py --frames 32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from training.sp.testing import DistributedPool  # noqa: E402

VISION = dict(model_type="siglip_vision_model", hidden_size=128, intermediate_size=256, num_hidden_layers=4,
              num_attention_heads=4, patch_size=8, image_size=64, vision_use_head=False)
TEXT = dict(model_type="qwen2", hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=65536, tie_word_embeddings=False)

_STATE: dict = {}


def _setup(frames: int):
    if "model" in _STATE:
        return _STATE["model"], _STATE["batch"]
    from training.model.configuration import LongVILAConfig
    from training.model.processing import build_processor
    from training.model.profiles import build_model
    from training.model.smoke_data import SmokeBatchSource

    proc = build_processor(16, 64)
    cfg = LongVILAConfig(vision_config=dict(VISION), text_config=dict(TEXT), image_token_id=proc.image_token_id)
    model = build_model(cfg, seed=0)
    model.train()
    batch = SmokeBatchSource(proc, seed=0, batch_size=1, frames=(frames, frames)).batch(0)
    _STATE["model"], _STATE["batch"] = model, batch
    return model, batch


def rank_step(frames: int, u: int, r: int, steps: int) -> dict:
    from training.sp.layout import padded_length
    from training.sp.sharding import mmsp_loss, sync_gradients
    from training.sp.testing import cached_groups

    model, batch = _setup(frames)
    groups = cached_groups(u, r) if u * r > 1 else None
    # replicated vision baseline: the whole frame set through vision tower + projector, forward + backward
    rep = []
    for i in range(steps + 1):
        model.zero_grad(set_to_none=True)
        t = time.thread_time()
        model.get_image_features(batch["pixel_values"]).sum().backward()
        if i:
            rep.append(time.thread_time() - t)
    vis, cpu, wall = [], [], []
    for i in range(steps + 1):
        model.zero_grad(set_to_none=True)
        if dist.is_initialized():
            dist.barrier()
        t_w, t_c = time.perf_counter(), time.process_time()
        loss, _ = mmsp_loss(model, batch, groups)
        loss.backward()
        sync_gradients(model, groups)
        c, w = time.process_time() - t_c, time.perf_counter() - t_w
        # stage-1 vision work of this rank: its own frames through vision tower + projector, fwd + bwd
        if groups is not None:
            from training.sp.sharding import frame_split

            start, n = frame_split(batch["pixel_values"].shape[0], groups.sp_size)[groups.sp_rank]
            pv = batch["pixel_values"][start:start + n]
        else:
            pv = batch["pixel_values"]
        t = time.thread_time()
        if pv.shape[0]:
            model.get_image_features(pv).sum().backward()
        vb = time.thread_time() - t
        if i:
            vis.append(vb)
            cpu.append(c)
            wall.append(w)
    S = batch["input_ids"].shape[1]
    P = 1 if groups is None else groups.sp_size
    return {"vision_sharded": statistics.median(vis), "vision_replicated": statistics.median(rep),
            "step_cpu": statistics.median(cpu), "step_wall": statistics.median(wall),
            "frames_rank": (batch["pixel_values"].shape[0] + P - 1) // P,
            "local_tokens": padded_length(S, groups) // P if groups else S, "seq": S}


def accuracy_table() -> str:
    """Loss and every parameter's gradient of the sharded smoke VLM vs the plain model (max relative errors,
    worst parameter), packed rows + uneven frames + padding, float64 and float32."""
    from training.model.profiles import create_smoke_checkpoint

    data = dict(seed=4, batch_size=2, frames=(0, 5), pack=2)
    lines = ["| config | world | dtype | loss rel. err | worst param grad rel. err | unsynced (control) |",
             "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        ck = create_smoke_checkpoint(Path(tmp) / "smoke")
        for world, configs in ((2, [(2, 1), (1, 2)]), (4, [(4, 1), (1, 4), (2, 2), (1, 2)])):
            with DistributedPool(world, timeout_s=600) as pool:
                for dtype in ("float64", "float32"):
                    res = pool.run("training.model.sp_checks:case_vlm_grads", ck, dtype, data, configs)
                    for i, (u, r) in enumerate(configs):
                        worst = max((x[i] for x in res), key=lambda z: z["grad_rel"])
                        loss_rel = max(x[i]["loss_rel"] for x in res)
                        tag = f"U={u} x R={r}" + (f" (DP={world // (u * r)})" if u * r < world else "")
                        lines.append(f"| {tag} | {world} | {dtype} | {loss_rel:.1e} | {worst['grad_rel']:.1e} "
                                     f"({worst['worst_param']}) | {worst['unsynced_grad_rel']:.1e} |")
    return "Equivalence with the single-process model (smoke VLM, 2 packed rows, 0-5 frames per sample)\n\n" + \
        "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the markdown table here too")
    ap.add_argument("--accuracy-only", action="store_true", help="only the float64 / float32 equivalence table")
    args = ap.parse_args()
    torch.set_num_threads(1)
    acc = accuracy_table()
    print(acc)
    if args.accuracy_only:
        if args.out:
            Path(args.out).write_text(acc + "\n")
        return
    rows = []
    base = rank_step(args.frames, 1, 1, args.steps)
    rows.append(("SP=1 (plain model)", 1, base))
    for world, configs in ((2, [(2, 1), (1, 2)]), (4, [(4, 1), (1, 4), (2, 2)])):
        with DistributedPool(world, timeout_s=600) as pool:
            for u, r in configs:
                res = pool.run(rank_step, args.frames, u, r, args.steps)
                agg = {k: max(x[k] for x in res) for k in res[0]}
                name = {(2, 1): "Ulysses U=2", (1, 2): "zigzag ring R=2", (4, 1): "Ulysses U=4",
                        (1, 4): "zigzag ring R=4", (2, 2): "2D U=2 x R=2"}[(u, r)]
                rows.append((name, world, agg))
    lines = [
        f"VLM MM-SP step, {args.frames} frames x 16 visual tokens, sequence {base['seq']} tokens, batch 1, "
        f"CPU gloo, 1 thread per rank",
        "",
        "| config | world | frames/rank | vision CPU s/rank (stage-1 sharded) | vision CPU s (replicated) "
        "| stage-1 gain | "
        "step CPU s (max rank) | step CPU vs SP=1 | step wall s | local tokens |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, world, a in rows:
        lines.append(
            f"| {name} | {world} | {a['frames_rank']} | {a['vision_sharded']:.3f} | {a['vision_replicated']:.3f} | "
            f"{a['vision_replicated'] / max(a['vision_sharded'], 1e-9):.2f}x | {a['step_cpu']:.3f} | "
            f"{base['step_cpu'] / max(a['step_cpu'], 1e-9):.2f}x | {a['step_wall']:.3f} | {a['local_tokens']} |")
    text = acc + "\n\n" + "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
