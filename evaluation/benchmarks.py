"""End-to-end benchmark runs from a checkpoint, shared by `longvila eval` and the Dagster assets.

Each function loads the checkpoint, runs the benchmark, writes its outputs atomically under
`out_dir` (results.json, summary.md, and for V-NIAH heatmap.png) and returns the result object.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from longvila import io as lio
from longvila.errors import InputError
from longvila.progress import ProgressFn

from .caption_score import (CaptionItem, CaptionScoreResult, evaluate_captions, make_judge,
                            write_caption_outputs)
from .niah import (NiahConfig, NiahResult, haystack_from_frames_parquet, load_haystack, read_needle_set,
                   read_niah_results, run_niah, synthetic_haystack, write_niah_outputs)
from .videomme import (VideoMMEResult, evaluate_videomme, load_questions, sample_uniform_frames,
                       write_videomme_outputs)

__all__ = [
    "get_haystack",
    "run_niah_benchmark",
    "run_niah_sharded",
    "run_videomme_benchmark",
    "run_caption_benchmark",
]


def get_haystack(config: NiahConfig, video: str | None = None, frames_parquet: str | None = None,
                 workdir: str | None = None, captions_parquet: str | None = None) -> tuple[list, str]:
    """Haystack frames and a description of their source: a video file, a `video_frames` layer
    file (without the frames of clips that `captions_parquet` annotates with on-screen text), or
    (neither given) a synthetic video made with curation.synth under `workdir`."""
    need = max(config.frame_counts)
    if video:
        return load_haystack(video, fps=config.fps, max_frames=need, size=config.frame_size), f"video:{video}"
    if frames_parquet:
        return haystack_from_frames_parquet(frames_parquet, max_frames=need, size=config.frame_size,
                                            captions_url=captions_parquet), f"video_frames:{frames_parquet}"
    wd = workdir or tempfile.mkdtemp(prefix="niah-")
    path = str(Path(wd) / "haystack.mp4")
    return synthetic_haystack(path, duration_s=max(need, 4), frame_size=config.frame_size, fps=config.fps), \
        f"synthetic:{path}"


def run_niah_benchmark(checkpoint: str, out_dir: str, config: NiahConfig | None = None,
                       video: str | None = None, frames_parquet: str | None = None,
                       progress: ProgressFn | None = None, title: str | None = None,
                       captions_parquet: str | None = None) -> NiahResult:
    from .runner import load_runner

    cfg = (config or NiahConfig()).validate()
    with tempfile.TemporaryDirectory(prefix="niah-") as wd:
        haystack, source = get_haystack(cfg, video, frames_parquet, wd, captions_parquet)
        runner = load_runner(checkpoint)
        result = run_niah(runner, haystack, cfg, progress=progress)
    result.config["haystack_source"] = source
    result.config["checkpoint"] = str(checkpoint)
    write_niah_outputs(result, out_dir, title=title)
    return result


def run_niah_sharded(checkpoint: str, out_dir: str, config: NiahConfig | None = None,
                     nproc: int = 2, ulysses: int | None = None, ring: int = 1,
                     video: str | None = None, frames_parquet: str | None = None, timeout_s: float = 1800.0,
                     extra_env: dict | None = None, captions_parquet: str | None = None) -> NiahResult:
    """Launch `torchrun --nproc-per-node nproc -m evaluation.sharded` (gloo on CPU, nccl on GPU) and
    read back the results rank 0 wrote. `ulysses * ring` must equal nproc (one SP group)."""
    cfg = (config or NiahConfig()).validate()
    ulysses = ulysses or max(1, nproc // ring)
    if ulysses * ring != nproc:
        raise ValueError(f"ulysses ({ulysses}) x ring ({ring}) must equal nproc ({nproc})")
    # fail fast, here, on a bad haystack or needle set (names the file) rather than in every rank
    if cfg.needles_dir:
        read_needle_set(cfg.needles_dir, cfg.num_needles)
    if video is not None:
        load_haystack(video, fps=cfg.fps, max_frames=1, size=cfg.frame_size)
    elif frames_parquet is not None:
        haystack_from_frames_parquet(frames_parquet, max_frames=1, size=cfg.frame_size, captions_url=captions_parquet)
    with tempfile.TemporaryDirectory(prefix="niah-sp-") as wd:
        if video is None and frames_parquet is None:
            video = str(Path(wd) / "haystack.mp4")
            synthetic_haystack(video, duration_s=max(max(cfg.frame_counts), 4), frame_size=cfg.frame_size,
                               fps=cfg.fps)
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
            "--master-port", str(_free_port()), "-m", "evaluation.sharded",
            "--checkpoint", str(checkpoint), "--out", str(out_dir),
            *(["--video", str(video)] if video else ["--frames-parquet", str(frames_parquet)]),
            "--frame-counts", ",".join(map(str, cfg.frame_counts)),
            "--depths", ",".join(f"{d:g}" for d in cfg.depths),
            "--needles", str(cfg.num_needles), "--fps", str(cfg.fps), "--frame-size", str(cfg.frame_size),
            "--seed", str(cfg.seed), "--ulysses", str(ulysses), "--ring", str(ring), "--needle-set", cfg.needle_set,
            *(["--needles-dir", str(cfg.needles_dir)] if cfg.needles_dir else []),
            *(["--captions-parquet", str(captions_parquet)] if captions_parquet and frames_parquet else []),
        ]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), **(extra_env or {})}
        # own process group: on a timeout or an interrupt the whole torchrun tree is ended, no orphan ranks
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=timeout_s)
        except BaseException:
            _kill_group(proc)
            raise
        if proc.returncode != 0:
            tail = out.decode("utf-8", "replace")[-4000:]
            raise RuntimeError(f"sharded V-NIAH failed (exit {proc.returncode}):\n{tail}")
    return read_niah_results(out_dir)


def _kill_group(proc: subprocess.Popen) -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_videomme_benchmark(checkpoint: str | Any, questions: str, video_dir: str, out_dir: str,
                           subtitle_dir: str | None = None, num_frames: int = 8, subtitles: str = "auto",
                           max_new_tokens: int = 8, scoring: str = "generate",
                           subtitle_selection: str = "frames",
                           progress: ProgressFn | None = None) -> VideoMMEResult:
    """`checkpoint` is a checkpoint path, or any answerer callable(frames, prompt) -> str."""
    qs = load_questions(questions, subtitle_dir=subtitle_dir)
    if callable(checkpoint):
        answerer = checkpoint
    else:
        from .runner import load_runner

        answerer = load_runner(str(checkpoint), max_new_tokens=max_new_tokens)
    result = evaluate_videomme(answerer, qs, video_dir, num_frames=num_frames, subtitles=subtitles,
                               scoring=scoring, subtitle_selection=subtitle_selection, progress=progress)
    write_videomme_outputs(result, out_dir)
    return result


def run_caption_benchmark(checkpoint: str | Any, references: str | Sequence[CaptionItem], out_dir: str,
                          judge: Any = None, num_frames: int = 8, retries: int = 2,
                          video_dir: str | None = None, max_new_tokens: int = 64,
                          progress: ProgressFn | None = None) -> CaptionScoreResult:
    """Caption every reference video with the checkpoint and score the captions.

    `references`: a JSON/JSONL file (see caption_score.load_references) or CaptionItems; a video is
    the item's `video` path or `<video_dir>/<video_id>.mp4`. `judge`: a backend, a spec string
    ("none", "local:PATH", "openai:URL#MODEL") or None."""
    from .caption_score import load_references

    items = load_references(references) if isinstance(references, str) else list(references)
    judge_name = ""
    if isinstance(judge, str):
        judge, judge_name = make_judge(judge)
    elif judge is not None:
        judge_name = getattr(judge, "model_id", type(judge).__name__)
    if callable(checkpoint) and not isinstance(checkpoint, str):
        captioner = checkpoint
    else:
        from .runner import load_runner

        captioner = load_runner(str(checkpoint), max_new_tokens=max_new_tokens)

    def frames_for(it: CaptionItem) -> list:
        path = it.video or (lio.join(video_dir, f"{it.video_id}.mp4") if video_dir else None)
        if not path:
            raise InputError(it.video_id, "no video path for this reference caption")
        if not lio.exists(path):
            raise InputError(path, "video does not exist")
        return sample_uniform_frames(path, num_frames)

    result = evaluate_captions(items, judge=judge, captioner=captioner, frames_for=frames_for,
                               retries=retries, judge_name=judge_name, progress=progress)
    write_caption_outputs(result, out_dir)
    return result
