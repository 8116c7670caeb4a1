"""The demo corpus: lesson videos whose sidecars are exact (valid against the probed duration, spans on the
real cuts), whose glyph shots are found by the shot detector, and which are a pure function of the seed."""

import json

from curation.captioning.sidecar import load_sidecar
from curation.demo_corpus import make_demo_corpus
from curation.glyphs import glyph_image, random_style, render_glyph
from curation.probe import probe_video
from curation.shots import detect_shots


def test_lessons_sidecars_and_cuts(tmp_path):
    info = make_demo_corpus(str(tmp_path / "a"), lessons=2, glyph_shots=12, srt_every=2, with_sample_corpus=False)
    assert sorted(info) == ["lesson_01.mp4", "lesson_02.mp4"]
    assert info["lesson_01.mp4"]["sidecar"] == "lesson_01.json" and info["lesson_02.mp4"]["sidecar"] == "lesson_02.srt"
    path = tmp_path / "a" / "lesson_01.mp4"
    probe = probe_video(str(path))
    assert abs(probe.duration_s - info["lesson_01.mp4"]["duration_s"]) < 0.2 and probe.width == probe.height == 128
    side = load_sidecar(str(tmp_path / "a" / "lesson_01.json"), probe.duration_s)  # validates the spans
    texts = [s.text for s in side.segments]
    assert len(texts) == 12 + 4 and sum(t is not None for t in texts) == 12 and all(t.isdigit() for t in texts if t)
    srt_duration = probe_video(str(tmp_path / "a" / "lesson_02.mp4")).duration_s
    srt = load_sidecar(str(tmp_path / "a" / "lesson_02.srt"), srt_duration)
    assert len(srt.segments) == 16 and all(s.text is None for s in srt.segments)
    truth = set(info["lesson_01.mp4"]["cuts"])
    found = {s.start_frame for s in detect_shots(str(path))[1:]}
    # cuts between drifting backgrounds are found (the cascade of issue 13 places 13 of these 15 exactly; a clip
    # that straddles a missed cut gets no sidecar caption and is left out of the V-NIAH haystack)
    assert len(truth & found) >= 0.85 * len(truth)
    # the detector reads part of the hue drift as a gradual transition and splits some shots; harmless (the
    # pieces are covered by the same sidecar segment), but it must not shred them
    assert len(found - truth) <= 0.35 * len(truth)


def test_corpus_is_a_pure_function_of_the_seed(tmp_path):
    import av
    import numpy as np

    def frames(d):
        with av.open(str(d / "lesson_01.mp4")) as c:
            return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]

    a = make_demo_corpus(str(tmp_path / "a"), lessons=1, glyph_shots=3, with_sample_corpus=False)
    b = make_demo_corpus(str(tmp_path / "b"), lessons=1, glyph_shots=3, with_sample_corpus=False)
    make_demo_corpus(str(tmp_path / "c"), seed=1, lessons=1, glyph_shots=3, with_sample_corpus=False)
    side = "lesson_01.json"
    assert a == b and (tmp_path / "a" / side).read_bytes() == (tmp_path / "b" / side).read_bytes()
    fa, fb = frames(tmp_path / "a"), frames(tmp_path / "b")
    assert len(fa) == len(fb) and all(np.array_equal(x, y) for x, y in zip(fa, fb))
    assert json.loads((tmp_path / "c" / "lesson_01.json").read_text()) != json.loads(
        (tmp_path / "a" / "lesson_01.json").read_text())


def test_glyph_readability_contract():
    import random

    import numpy as np

    img = np.asarray(glyph_image("8", 128, seed=3))
    style = random_style(random.Random(3))
    ink = np.array(style.text_colour)
    mask = np.abs(img.astype(int) - ink).sum(-1) < 60  # pixels of the digit
    ys, xs = np.nonzero(mask)
    assert 0.6 * 128 <= ys.max() - ys.min() + 1 <= 0.8 * 128  # the glyph fills ~75 % of the height
    assert abs((ys.max() + ys.min()) / 2 - 64) <= 128 / 32 + 8  # centred within the jitter (+ font metrics)
    again = render_glyph("8", 128, random_style(random.Random(3)), random.Random(4))
    assert again.size == (128, 128)
