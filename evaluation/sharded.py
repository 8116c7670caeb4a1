"""V-NIAH (and free generation) with the MM-SP sharded forward, for contexts that do not fit one process.

Launch under torchrun (one SP group of `nproc` ranks; gloo on CPU, nccl when CUDA is available)::

    torchrun --nproc-per-node 2 -m evaluation.sharded --checkpoint CKPT --video haystack.mp4 \\
        --out eval/niah/sp2 --frame-counts 8,16,32 --ulysses 2 --ring 1

or `longvila eval niah --checkpoint CKPT --nproc 2` / `evaluation.benchmarks.run_niah_sharded`.

Scoring method (chosen and documented here): teacher-forced greedy match. Every rank builds the same
sample (frames, prompt, answer tokens appended), `training.sp.sharding.mmsp_logits(..., gather=False)`
runs one sharded prefill (stage 1: frames split over the ranks; stage 2: zigzag token shards, Ulysses /
ring attention), each rank runs the LM head on the answer positions it holds only (a [k, V]
buffer) and one all-reduce (sum) over the SP group completes it on every rank. The arg-max of row j is
the token greedy decoding would emit at answer step j given the answer's first j tokens, so "the
decoded arg-maxes equal the answer" is exactly "greedy decoding starts with the answer" -- the V-NIAH
criterion -- at the cost of ONE sharded prefill per sample and without gathering the full [S, V]
logits. `ShardedRunner.__call__` also offers free-form greedy decoding by repeated sharded prefill
(no KV cache under SP: one full prefill per new token; fine for short answers).

Only rank 0 writes outputs. The single-process `evaluation.runner.ModelRunner` computes the same
quantities with the plain forward; tests check that world 2 matches world 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

import torch
import torch.distributed as dist

from .runner import append_target, build_inputs

__all__ = ["ShardedRunner", "main"]


class ShardedRunner:
    """Answerer whose forward passes are MM-SP sharded over `groups` (all ranks call it in lockstep)."""

    def __init__(self, model: Any, processor: Any, groups: Any, mode: str = "auto", max_new_tokens: int = 16,
                 device: str | None = None):
        self.model = model.eval()
        self.processor = processor
        self.groups = groups
        self.mode = mode
        self.max_new_tokens = int(max_new_tokens)
        self.device = torch.device(device) if device else next(model.parameters()).device

    @property
    def sp_active(self) -> bool:
        return self.groups is not None and self.groups.sp_size > 1

    def _batch(self, batch: dict) -> dict:
        return {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    def _rows(self, batch: dict, positions: Sequence[int]) -> torch.Tensor:
        """Logits rows at global sequence `positions`, complete on every rank (the LM head runs on those
        rows only)."""
        from training.sp.sharding import mmsp_logits

        with torch.no_grad():
            return mmsp_logits(self.model, self._batch(batch), self.groups, mode=self.mode, positions=list(positions))

    def target_logprobs(self, frames: Sequence[Any], prompt: str, target: str) -> torch.Tensor:
        """[len(target tokens)] log-probabilities of the target tokens (teacher forcing), chunk-wise over the
        LM head, complete on every rank."""
        from training.sp.sharding import mmsp_token_logprobs

        ids = self.target_ids(target)
        batch, pos = append_target(build_inputs(self.processor, frames, prompt), ids)
        with torch.no_grad():
            return mmsp_token_logprobs(self.model, self._batch(batch), self.groups, pos.tolist(), ids, mode=self.mode)

    def target_logits_ids(self, frames: Sequence[Any], prompt: str, target_ids: Sequence[int]) -> torch.Tensor:
        batch, pos = append_target(build_inputs(self.processor, frames, prompt), target_ids)
        return self._rows(batch, pos.tolist())

    def target_ids(self, target: str) -> list[int]:
        ids = self.processor.tokenizer.encode(target, add_special_tokens=False)
        if not ids:
            raise ValueError("empty target answer")
        return ids

    def target_logits(self, frames: Sequence[Any], prompt: str, target: str) -> torch.Tensor:
        return self.target_logits_ids(frames, prompt, self.target_ids(target))

    def greedy_continuation(self, frames: Sequence[Any], prompt: str, target: str) -> str:
        logits = self.target_logits(frames, prompt, target)
        return self.processor.decode(logits.argmax(-1).tolist(), skip_special_tokens=True)

    def choice_scores(self, frames: Sequence[Any], prompt: str, letters: Sequence[str]) -> dict[str, float]:
        from .runner import letter_scores

        batch = build_inputs(self.processor, frames, prompt)
        row = self._rows(batch, [batch["input_ids"].shape[1] - 1])[0]
        return letter_scores(row, self.processor.tokenizer, letters)

    def generate_ids(self, frames: Sequence[Any], prompt: str, max_new_tokens: int,
                     stop_at_eos: bool = False) -> list[int]:
        """Greedy decoding by repeated sharded prefill (one prefill per new token)."""
        base = build_inputs(self.processor, frames, prompt)
        new: list[int] = []
        eos = self.processor.eos_token_id
        for _ in range(max_new_tokens):
            batch, _ = append_target(base, new) if new else (base, None)
            last = batch["input_ids"].shape[1] - 1
            tok = int(self._rows(batch, [last])[0].argmax())
            new.append(tok)
            if stop_at_eos and tok == eos:
                break
        return new

    def __call__(self, frames: Sequence[Any], prompt: str, max_new_tokens: int | None = None) -> str:
        ids = self.generate_ids(frames, prompt, max_new_tokens or self.max_new_tokens, stop_at_eos=True)
        eos = self.processor.eos_token_id
        if eos in ids:
            ids = ids[: ids.index(eos)]
        return self.processor.decode(ids, skip_special_tokens=True).strip()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m evaluation.sharded", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--video", help="haystack video (every rank decodes the same frames)")
    src.add_argument("--frames-parquet", help="haystack from a video_frames layer file (local or fsspec URL)")
    p.add_argument("--frame-counts", default="8,16,32")
    p.add_argument("--depths", default="0,25,50,75,100")
    p.add_argument("--needles", type=int, default=2)
    p.add_argument("--captions-parquet", default=None, help="the haystack video's clip captions: frames of "
                   "clips annotated with on-screen text are left out of the haystack")
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--frame-size", type=int, default=384)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--needle-set", default="digits", help="built-in needle set: digits | text")
    p.add_argument("--needles-dir", default=None, help="a user's needle set (evaluation.niah: Parquet or folder)")
    p.add_argument("--ulysses", type=int, default=None)
    p.add_argument("--ring", type=int, default=1)
    p.add_argument("--mode", default="auto", help="MM-SP attention mode (training.sp.attention.MODES)")
    p.add_argument("--dump-logits", default=None, help="(tests) rank 0 saves the first sample's target logits here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from longvila.progress import printer
    from training.model import load_checkpoint
    from training.sp.groups import init_sp_groups, set_sp_groups

    from .niah import NiahConfig, load_haystack, run_niah, write_niah_outputs

    args = _parse(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    use_cuda = torch.cuda.is_available()
    device = "cpu"
    if world > 1 and not dist.is_initialized():
        if use_cuda:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        dist.init_process_group("nccl" if use_cuda else "gloo")
    elif use_cuda:
        device = "cuda:0"
    ulysses = args.ulysses or max(1, world // args.ring)
    groups = init_sp_groups(ulysses, args.ring) if world > 1 else None
    if groups is not None:
        set_sp_groups(groups)
    try:
        cfg = NiahConfig(frame_counts=[int(x) for x in args.frame_counts.split(",")],
                         depths=[float(x) for x in args.depths.split(",")], num_needles=args.needles,
                         fps=args.fps, frame_size=args.frame_size, seed=args.seed, needle_set=args.needle_set,
                         needles_dir=args.needles_dir).validate()
        model, processor = load_checkpoint(args.checkpoint, device=device)
        runner = ShardedRunner(model, processor, groups, mode=args.mode, device=device)
        if args.video:
            haystack = load_haystack(args.video, fps=cfg.fps, max_frames=max(cfg.frame_counts), size=cfg.frame_size)
            source = f"video:{args.video}"
        else:
            from .niah import haystack_from_frames_parquet

            haystack = haystack_from_frames_parquet(args.frames_parquet, max_frames=max(cfg.frame_counts),
                                                    size=cfg.frame_size, captions_url=args.captions_parquet)
            source = f"video_frames:{args.frames_parquet}"
        if args.dump_logits:
            from .niah import assemble_frames, build_grid, load_needles, niah_prompt

            needles = load_needles(cfg)
            s = build_grid(cfg.frame_counts, cfg.depths, len(needles))[-1]
            frames = assemble_frames(haystack, needles[s.needle].image, s)
            logits = runner.target_logits(frames, niah_prompt(needles[s.needle].question), needles[s.needle].answer)
            gen = runner.generate_ids(frames, niah_prompt(needles[s.needle].question), 4)
            choice = runner.choice_scores(frames, niah_prompt(needles[s.needle].question), ["A", "B", "C", "D"])
            logprobs = runner.target_logprobs(frames, niah_prompt(needles[s.needle].question), needles[s.needle].answer)
            if rank == 0:
                torch.save({"logits": logits.cpu(), "generated": gen, "choice": choice, "logprobs": logprobs.cpu(),
                            "frame_count": s.frame_count}, args.dump_logits)
        result = run_niah(runner, haystack, cfg, progress=printer("[niah-sp] ") if rank == 0 else None)
        result.method = f"{result.method} (MM-SP sharded prefill, sp={world}: ulysses={ulysses} ring={args.ring})"
        result.config.update({"haystack_source": source, "checkpoint": args.checkpoint,
                              "sp_size": world, "ulysses": ulysses, "ring": args.ring})
        if rank == 0:
            write_niah_outputs(result, args.out)
        if world > 1:
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
