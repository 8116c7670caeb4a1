"""V-NIAH: grid construction, needle insertion, scoring, results table and heatmap."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from evaluation.niah import (NiahConfig, NiahResult, assemble_frames, build_grid, default_needles, heatmap_png,
                             load_haystack, needle_position, render_needle, run_niah, score_sample,
                             write_niah_outputs)


@pytest.mark.parametrize(
    "n, depth, pos",
    [(1, 0, 0), (1, 100, 0), (2, 0, 0), (2, 49, 0), (2, 50, 1), (2, 100, 1), (5, 0, 0), (5, 25, 1), (5, 50, 2),
     (5, 75, 3), (5, 100, 4), (10, 50, 5), (10, 33.3, 3), (100, 100, 99), (101, 50, 50)],
)
def test_needle_position(n, depth, pos):
    assert needle_position(n, depth) == pos


def test_needle_position_is_monotone_and_validated():
    for n in (3, 8, 17, 64):
        ps = [needle_position(n, d) for d in np.linspace(0, 100, 41)]
        assert ps == sorted(ps) and ps[0] == 0 and ps[-1] == n - 1
    for bad in ((0, 50), (4, -1), (4, 100.5)):
        with pytest.raises(ValueError):
            needle_position(*bad)


def test_grid_covers_every_cell_once():
    g = build_grid([16, 4, 8, 4], [100, 0, 50], num_needles=2)
    assert len(g) == 3 * 3 * 2
    assert [(s.frame_count, s.depth, s.needle) for s in g] == sorted((s.frame_count, s.depth, s.needle) for s in g)
    assert len({(s.frame_count, s.depth, s.needle) for s in g}) == len(g)
    for s in g:
        assert s.position == needle_position(s.frame_count, s.depth)


@pytest.mark.parametrize("hay_len", [3, 40])  # shorter than the samples (repeated) and longer
def test_assemble_inserts_the_needle_exactly_once(hay_len):
    hay = [object() for _ in range(hay_len)]
    needle = object()
    for s in build_grid([1, 2, 7, 16], [0, 10, 25, 50, 75, 90, 100], num_needles=1):
        frames = assemble_frames(hay, needle, s)
        assert len(frames) == s.frame_count
        assert [i for i, f in enumerate(frames) if f is needle] == [s.position]
        rest = [f for f in frames if f is not needle]
        assert rest == [hay[i % hay_len] for i in range(s.frame_count - 1)]  # haystack order kept
    with pytest.raises(ValueError):
        assemble_frames([], needle, build_grid([2], [0], 1)[0])


def test_render_needle_and_default_needles():
    img = render_needle("apple", size=(96, 64), seed=1)
    assert img.size == (96, 64) and img.mode == "RGB"
    arr = np.asarray(img)
    assert (arr.min(axis=2) < 60).sum() > 50  # dark text pixels exist
    needles = default_needles(4, size=(64, 64), seed=3)
    assert [n.kind for n in needles] == ["word", "number", "word", "number"]
    assert needles[1].answer.isdigit() and needles[0].answer.isalpha()
    assert "word" in needles[0].question and "number" in needles[1].question
    again = default_needles(4, size=(64, 64), seed=3)
    assert [n.answer for n in again] == [n.answer for n in needles]
    assert np.array_equal(np.asarray(again[0].image), np.asarray(needles[0].image))
    with pytest.raises(ValueError):
        default_needles(0)


def _hay(n, size=32):
    return [Image.new("RGB", (size, size), (10 * i % 255, 80, 120)) for i in range(n)]


class Finder:
    """Scripted answerer: finds the needle frame among the frames (pixel-identical) and answers it,
    but only looks at the first `window` frames (to give a known accuracy pattern)."""

    def __init__(self, needles, window=10**9, style="{}"):
        self.needles, self.window, self.style = needles, window, style

    def __call__(self, frames, prompt):
        for f in frames[: self.window]:
            for n in self.needles:
                if f is n.image:
                    return self.style.format(n.answer)
        return "I cannot see it."


def test_run_niah_with_a_scripted_answerer_gives_the_expected_grid():
    cfg = NiahConfig(frame_counts=[4, 8, 16], depths=[0, 50, 100], num_needles=2, frame_size=32)
    needles = default_needles(2, size=(32, 32))
    # sees only the first 9 frames: every needle at N<=8; at N=16 depth 0 and 50 (index round(7.5)=8)
    res = run_niah(Finder(needles, window=9, style="{}. It is written in black."), _hay(20), cfg, needles=needles)
    g = res.grid()
    assert len(res.records) == 18 and res.method == "free_generation"
    assert all(g[(n, d)] == 1.0 for n in (4, 8) for d in (0, 50, 100))
    assert g[(16, 0.0)] == 1.0 and g[(16, 50.0)] == 1.0 and g[(16, 100.0)] == 0.0
    assert res.accuracy_by_frame_count() == {4: 1.0, 8: 1.0, 16: pytest.approx(2 / 3)}
    assert res.accuracy == pytest.approx(16 / 18)
    md = res.to_markdown()
    assert "| 100% | 1.00 | 1.00 | 0.00 |" in md and "| depth \\ frames | 4 | 8 | 16 |" in md
    assert not res.haystack_repeated


def test_scoring_is_a_normalised_match():
    needles = default_needles(1, size=(32, 32))
    n = needles[0]
    frames = [n.image]
    assert score_sample(lambda f, p: n.answer.upper() + "!", frames, n)["correct"]
    wrong = score_sample(lambda f, p: f"the word is {n.answer}", frames, n)
    assert not wrong["correct"] and wrong["contains"]
    assert not score_sample(lambda f, p: "", frames, n)["correct"]

    class TF:  # teacher-forced path: prediction must equal the answer exactly (normalised)
        def greedy_continuation(self, frames, prompt, target):
            return " " + target.capitalize() + "."

    out = score_sample(TF(), frames, n)
    assert out["correct"] and out["method"] == "teacher_forced_greedy"
    with pytest.raises(TypeError):
        score_sample(object(), frames, n)


def test_heatmap_and_outputs_are_written(tmp_path, leftovers):
    cfg = NiahConfig(frame_counts=[2, 4], depths=[0, 100], num_needles=1, frame_size=32)
    needles = default_needles(1, size=(32, 32))
    res = run_niah(Finder(needles, window=1), _hay(2), cfg, needles=needles)
    assert res.haystack_repeated  # 2 haystack frames < 3 needed
    png = heatmap_png(res)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    im = Image.open(__import__("io").BytesIO(png))
    assert im.size[0] > 200 and im.size[1] > 150
    # green for a perfect cell, red for a zero cell: the picture shows the grid
    arr = np.asarray(im.convert("RGB")).reshape(-1, 3).astype(int)
    assert ((arr[:, 1] > 180) & (arr[:, 0] < 60)).sum() > 100  # green-ish (hits)
    assert ((arr[:, 0] > 200) & (arr[:, 1] < 110)).sum() > 100  # red-ish (misses)
    paths = write_niah_outputs(res, str(tmp_path / "out"))
    assert (tmp_path / "out" / "heatmap.png").read_bytes()[:4] == b"\x89PNG"
    back = NiahResult.from_json(json.loads((tmp_path / "out" / "results.json").read_text()))
    assert back.grid() == res.grid() and back.method == res.method
    assert "V-NIAH" in (tmp_path / "out" / "summary.md").read_text()
    assert set(paths) == {"results", "heatmap", "summary"}
    assert leftovers(tmp_path) == []


def test_config_validation():
    with pytest.raises(ValueError):
        NiahConfig(frame_counts=[0]).validate()
    with pytest.raises(ValueError):
        NiahConfig(depths=[120]).validate()
    with pytest.raises(ValueError):
        NiahConfig(frame_counts=[]).validate()
    cfg = NiahConfig(frame_counts=[8, 4, 8], depths=[50, 0]).validate()
    assert cfg.frame_counts == [4, 8] and cfg.depths == [0.0, 50.0]


def test_haystack_from_a_video_at_1_fps(haystack_video):
    frames = load_haystack(haystack_video, fps=1.0, max_frames=64, size=48)
    assert len(frames) == 16  # 16 s video at 1 fps
    assert all(f.size == (48, 48) and f.mode == "RGB" for f in frames)
    assert len(load_haystack(haystack_video, fps=1.0, max_frames=5, size=48)) == 5


def test_haystack_bad_video_names_the_file(tmp_path):
    from longvila.errors import InputError

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"not a video at all" * 10)
    with pytest.raises(InputError) as ei:
        load_haystack(str(bad))
    assert "broken.mp4" in str(ei.value)


def test_smoke_checkpoint_end_to_end(smoke_runner, haystack_video, tmp_path):
    """The real model path: teacher-forced greedy scoring on a small grid; predictions are strings,
    accuracy is a fraction (near zero for the random smoke model)."""
    cfg = NiahConfig(frame_counts=[2, 6], depths=[0, 100], num_needles=2, frame_size=48)
    hay = load_haystack(haystack_video, fps=1.0, max_frames=8, size=48)
    res = run_niah(smoke_runner, hay, cfg)
    assert res.method == "teacher_forced_greedy" and len(res.records) == 8
    assert all(isinstance(r["prediction"], str) for r in res.records)
    assert 0.0 <= res.accuracy <= 1.0
    write_niah_outputs(res, str(tmp_path))
    assert (tmp_path / "heatmap.png").exists()


def test_teacher_forced_greedy_equals_greedy_decoding(smoke_runner, haystack_video):
    """The arg-max rows of one teacher-forced forward over the greedy tokens reproduce them exactly."""
    hay = load_haystack(haystack_video, fps=1.0, max_frames=6, size=48)
    prompt = "What is the word shown in the needle frame? Answer with a single word or number."
    gen = smoke_runner.generate_ids(hay, prompt, 5)
    assert len(gen) == 5
    tf = smoke_runner.target_logits_ids(hay, prompt, gen).argmax(-1).tolist()
    assert tf == gen
    # and a different target gives the rows that predict it (first row is the same in both)
    other = [(t + 1) % 400 + 5 for t in gen]
    rows = smoke_runner.target_logits_ids(hay, prompt, other)
    assert rows.shape[0] == 5 and int(rows[0].argmax()) == gen[0]


def test_frame_feature_cache_gives_identical_results(smoke_runner, haystack_video):
    """The LongVA-style embedding cache changes nothing but the cost: same logits, same grid."""
    from evaluation.runner import ModelRunner

    plain = ModelRunner(smoke_runner.model, smoke_runner.processor, cache_frames=False)
    cached = ModelRunner(smoke_runner.model, smoke_runner.processor, cache_frames=True)
    hay = load_haystack(haystack_video, fps=1.0, max_frames=6, size=48)
    cfg = NiahConfig(frame_counts=[3, 7], depths=[0, 50, 100], num_needles=1, frame_size=48)
    a, b = run_niah(plain, hay, cfg), run_niah(cached, hay, cfg)
    assert [r["prediction"] for r in a.records] == [r["prediction"] for r in b.records]
    # 6 haystack frames + 1 needle encoded once each; every later use is a hit
    assert cached.cache.misses == 7 and cached.cache.hits == sum(s for s in (3, 7) for _ in range(3)) - 7
    prompt = "What is the word shown in the needle frame?"
    gap = plain.target_logits(hay[:4], prompt, "apple") - cached.target_logits(hay[:4], prompt, "apple")
    assert gap.abs().max() < 1e-5
