import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curation.clips import CODE_VERSION, Clip, code_version, make_clips
from curation.shots import shots_from_cuts


def shots_strategy():
    return st.tuples(
        st.lists(st.integers(min_value=1, max_value=900), min_size=1, max_size=25),  # shot lengths in frames
        st.sampled_from([23.976, 24.0, 25.0, 29.97, 30.0, 50.0, 60.0]),
        st.floats(min_value=0.5, max_value=20.0),  # max_clip_s
        st.floats(min_value=0.0, max_value=1.0),  # min_clip_s as a fraction of max
    )


@settings(max_examples=300, deadline=None)
@given(shots_strategy())
def test_clip_properties(args):
    lengths, fps, max_s, min_frac = args
    min_s = max_s * min_frac
    max_frames = math.floor(max_s * fps + 1e-9)
    min_frames = max(1, math.ceil(min_s * fps - 1e-9))
    if max_frames < 1 or min_frames > max_frames:
        with pytest.raises(ValueError):
            make_clips(shots_from_cuts([], 10, fps=fps), fps, max_clip_s=max_s, min_clip_s=min_s)
        return
    cuts, acc = [], 0
    for n in lengths[:-1]:
        acc += n
        cuts.append(acc)
    total = sum(lengths)
    shots = shots_from_cuts(cuts, total, fps=fps)
    clips = make_clips(shots, fps, max_clip_s=max_s, min_clip_s=min_s)
    assert [c.index for c in clips] == list(range(len(clips)))
    by_shot = {s.index: s for s in shots}
    prev_end = -1
    for c in clips:
        s = by_shot[c.shot_index]
        # inside one shot, within [min, max], in time order, no overlap
        assert s.start_frame <= c.start_frame < c.end_frame <= s.end_frame
        assert min_frames <= c.num_frames <= max_frames
        assert c.num_frames / fps <= max_s + 1e-9 and c.num_frames / fps >= min_s - 1e-9
        assert c.start_frame >= prev_end
        prev_end = c.end_frame
        assert c.start_s == pytest.approx(c.start_frame / fps, abs=1e-5)
        assert c.end_s == pytest.approx(c.end_frame / fps, abs=1e-5)
    for s in shots:
        mine = [c for c in clips if c.shot_index == s.index]
        if s.num_frames < min_frames:
            assert mine == []  # shots shorter than min_clip_s are dropped
            continue
        if min_frames * 2 <= max_frames or s.num_frames <= max_frames:
            assert mine, "a shot of at least min_clip_s yields clips"
        # (with min > max/2 the spec's rule can drop every piece of a shot: e.g. 24 frames, max 23, min 18)
        if not mine:
            continue
        # near-equal pieces: contiguous, covering the whole shot when nothing had to be dropped
        sizes = [c.num_frames for c in mine]
        if mine[0].start_frame == s.start_frame and mine[-1].end_frame == s.end_frame and \
                all(a.end_frame == b.start_frame for a, b in zip(mine, mine[1:])):
            assert len(mine) >= math.ceil(s.num_frames / max_frames)
        if min_frames * 2 <= max_frames:
            # with min <= max/2 nothing is ever dropped: the clips cover the shot exactly, sizes differ <= 1
            assert mine[0].start_frame == s.start_frame and mine[-1].end_frame == s.end_frame
            assert all(a.end_frame == b.start_frame for a, b in zip(mine, mine[1:]))
            assert max(sizes) - min(sizes) <= 1
            assert len(mine) == math.ceil(s.num_frames / max_frames)


def test_paper_setting_ten_second_clips():
    fps = 25.0
    shots = shots_from_cuts([250 * 3 + 10, 250 * 3 + 10 + 12], 250 * 3 + 10 + 12 + 500, fps=fps)
    clips = make_clips(shots, fps, max_clip_s=10.0, min_clip_s=1.0)
    # shot 0: 760 frames -> 4 pieces of 190; shot 1: 12 frames (< 1 s) dropped; shot 2: 500 -> 2 x 250
    assert [(c.shot_index, c.num_frames) for c in clips] == [(0, 190)] * 4 + [(2, 250)] * 2
    assert clips[0].start_frame == 0 and clips[3].end_frame == 760 and clips[4].start_frame == 772


def test_short_piece_merge_and_drop_rules():
    fps = 10.0
    # max 10 frames, min 6 frames: an 11-frame shot splits 5+6 -> the 5 merges? 5+6=11 > 10 -> dropped
    shots = shots_from_cuts([], 11, fps=fps)
    clips = make_clips(shots, fps, max_clip_s=1.0, min_clip_s=0.6)
    assert [(c.start_frame, c.end_frame) for c in clips] == [(5, 11)]
    # a shot of exactly max frames is one clip; of exactly min frames too
    assert [(c.start_frame, c.end_frame) for c in make_clips(shots_from_cuts([], 10, fps=fps), fps, 1.0, 0.6)] \
        == [(0, 10)]
    assert len(make_clips(shots_from_cuts([], 6, fps=fps), fps, 1.0, 0.6)) == 1
    assert make_clips(shots_from_cuts([], 5, fps=fps), fps, 1.0, 0.6) == []


def test_invalid_arguments():
    shots = shots_from_cuts([], 100, fps=25.0)
    for kw in [dict(fps=0), dict(fps=-1), dict(fps=float("nan"))]:
        with pytest.raises(ValueError):
            make_clips(shots, **kw)
    with pytest.raises(ValueError):
        make_clips(shots, 25.0, max_clip_s=1.0, min_clip_s=2.0)
    with pytest.raises(ValueError):
        make_clips(shots, 25.0, max_clip_s=0.0, min_clip_s=0.0)


def test_versions_and_dict():
    assert CODE_VERSION == "clips-v2"
    assert code_version(10.0, 1.0) != code_version(5.0, 1.0)
    c = Clip(index=0, shot_index=0, start_frame=0, end_frame=25, start_s=0.0, end_s=1.0)
    assert c.to_dict()["end_frame"] == 25 and c.num_frames == 25 and c.duration_s == 1.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=5, max_value=400), st.integers(min_value=0, max_value=60)),
                min_size=1, max_size=15),
       st.floats(min_value=0.5, max_value=8.0), st.floats(min_value=0.0, max_value=0.5))
def test_clips_never_contain_transition_frames(parts, max_s, min_frac):
    """Shots joined by cuts (span 0) or gradual transitions (span > 0): no clip holds a frame of a span."""
    from curation.shots import Boundary, shots_from_boundaries

    fps = 25.0
    bounds, acc = [], 0
    for length, span in parts[:-1]:
        acc += length
        half = span // 2
        bounds.append(Boundary(acc) if span == 0 else Boundary(acc, "dissolve", acc - half, acc + span - half))
    total = acc + parts[-1][0]
    shots = shots_from_boundaries(bounds, total, fps=fps)
    spans = [(s.transition_start_frame, s.transition_end_frame) for s in shots]
    assert all(a <= s.start_frame <= b for s, (a, b) in zip(shots, spans))
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))  # spans never overlap
    clips = make_clips(shots, fps, max_clip_s=max_s, min_clip_s=max_s * min_frac)
    banned = {f for a, b in spans for f in range(a, b)}
    assert not any(f in banned for c in clips for f in range(c.start_frame, c.end_frame))
    for c in clips:  # times stay exact at constant rate
        assert c.start_s == pytest.approx(c.start_frame / fps, abs=1e-5)
        assert c.end_s == pytest.approx(c.end_frame / fps, abs=1e-5)
