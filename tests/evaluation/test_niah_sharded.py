"""The MM-SP sharded V-NIAH runner at world 2 (torchrun, gloo) matches the single-process runner."""

from __future__ import annotations

import os
from pathlib import Path
import subprocess
import sys

import pytest
import torch

from evaluation.benchmarks import _free_port, run_niah_sharded
from evaluation.niah import (NiahConfig, assemble_frames, build_grid, load_haystack, load_needles, niah_prompt,
                             run_niah)

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

CFG = dict(frame_counts=[3, 9], depths=[0, 50, 100], num_needles=2, frame_size=48)


@pytest.mark.parametrize("ulysses, ring", [(2, 1), (1, 2)], ids=["ulysses2", "ring2"])
def test_world2_matches_world1(smoke_checkpoint, smoke_runner, haystack_video, tmp_path, ulysses, ring):
    cfg = NiahConfig(**CFG).validate()
    dump = tmp_path / "logits.pt"
    out = tmp_path / "sp"
    # the ring case reads its haystack from a lake `video_frames` file instead of the video
    if ring == 2:
        from curation.frames import sample_video_frames
        from evaluation.niah import haystack_from_frames_parquet
        from longvila import io as lio

        pq_path = str(tmp_path / "video_frames" / "hay.parquet")
        lio.write_parquet(sample_video_frames(haystack_video, fps=1.0, max_frames=16, size=64), pq_path)
        source = ["--frames-parquet", pq_path]
        hay = haystack_from_frames_parquet(pq_path, max_frames=max(cfg.frame_counts), size=cfg.frame_size)
    else:
        source = ["--video", haystack_video]
        hay = load_haystack(haystack_video, fps=cfg.fps, max_frames=max(cfg.frame_counts), size=cfg.frame_size)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
        "-m", "evaluation.sharded", "--checkpoint", smoke_checkpoint, "--out", str(out), *source,
        "--frame-counts", "3,9", "--depths", "0,50,100", "--needles", "2", "--frame-size", "48",
        "--ulysses", str(ulysses), "--ring", str(ring), "--dump-logits", str(dump),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout.decode()[-3000:]

    from evaluation.niah import read_niah_results

    sharded = read_niah_results(str(out))
    assert "MM-SP sharded prefill, sp=2" in sharded.method
    assert sharded.config["ulysses"] == ulysses and sharded.config["ring"] == ring

    assert sharded.config["haystack_source"].startswith("video_frames:" if ring == 2 else "video:")
    # single process, same haystack, same needles
    single = run_niah(smoke_runner, hay, cfg)
    assert [r["prediction"] for r in sharded.records] == [r["prediction"] for r in single.records]
    assert [r["correct"] for r in sharded.records] == [r["correct"] for r in single.records]
    assert sharded.grid() == single.grid()

    # the logits rows themselves agree (largest sample of the grid), and so does free greedy decoding
    dumped = torch.load(dump)
    needles = load_needles(cfg)
    s = build_grid(cfg.frame_counts, cfg.depths, len(needles))[-1]
    frames = assemble_frames(hay, needles[s.needle].image, s)
    prompt = niah_prompt(needles[s.needle].question)
    ref = smoke_runner.target_logits(frames, prompt, needles[s.needle].answer)
    assert dumped["frame_count"] == 9 and dumped["logits"].shape == ref.shape
    torch.testing.assert_close(dumped["logits"], ref, atol=2e-4, rtol=1e-4)
    ref_lp = smoke_runner.target_logprobs(frames, prompt, needles[s.needle].answer)  # per-token log-likelihood
    assert dumped["logprobs"].shape == ref_lp.shape and bool((ref_lp < 0).all())
    torch.testing.assert_close(dumped["logprobs"], ref_lp, atol=2e-4, rtol=1e-4)
    assert dumped["generated"] == smoke_runner.generate_ids(frames, prompt, 4)
    ref_choice = smoke_runner.choice_scores(frames, prompt, ["A", "B", "C", "D"])
    assert dumped["choice"] == pytest.approx(ref_choice, abs=2e-4)


def test_launcher_rejects_a_bad_haystack_before_launching(smoke_checkpoint, tmp_path):
    """A bad haystack is reported (naming the file) before any rank is started; nothing is written."""
    from longvila.errors import InputError

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"junk" * 100)
    with pytest.raises(InputError, match="bad.mp4"):
        run_niah_sharded(smoke_checkpoint, str(tmp_path / "out"), NiahConfig(**CFG), nproc=2, video=str(bad))
    assert not (tmp_path / "out" / "results.json").exists()


def test_timeout_ends_every_rank(smoke_checkpoint, haystack_video, tmp_path):
    """A sharded run past its time limit is ended with its whole process tree (no orphaned ranks)."""
    import subprocess as sp
    import time

    out = tmp_path / "marker-out-dir"
    with pytest.raises(sp.TimeoutExpired):
        run_niah_sharded(smoke_checkpoint, str(out), NiahConfig(**CFG), nproc=2, video=haystack_video,
                         timeout_s=2.0)
    time.sleep(0.5)
    alive = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd = (p / "cmdline").read_bytes().decode("utf-8", "replace")
            except OSError:
                continue
            if str(out) in cmd:
                alive.append(cmd.replace("\0", " "))
    assert alive == []
    assert not (out / "results.json").exists()
