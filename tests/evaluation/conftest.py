"""Session fixtures for the evaluation tests: one smoke checkpoint, one VideoMME-format fixture, one
haystack video (all small, made once)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smoke_checkpoint(tmp_path_factory) -> str:
    from training.model import create_smoke_checkpoint

    return create_smoke_checkpoint(str(tmp_path_factory.mktemp("ckpt") / "smoke"), seed=0)


@pytest.fixture(scope="session")
def smoke_runner(smoke_checkpoint):
    from evaluation.runner import load_runner

    return load_runner(smoke_checkpoint, max_new_tokens=6)


@pytest.fixture(scope="session")
def videomme_fixture(tmp_path_factory) -> dict:
    from evaluation.fixtures import make_videomme_fixture

    return make_videomme_fixture(str(tmp_path_factory.mktemp("videomme")))


@pytest.fixture(scope="session")
def haystack_video(tmp_path_factory) -> str:
    from curation.synth import make_synthetic_video

    p = Path(tmp_path_factory.mktemp("haystack")) / "haystack.mp4"
    make_synthetic_video(str(p), shots=[(4, "testsrc2"), (4, "smptebars"), (4, "rgbtestsrc"), (4, "testsrc")],
                         fps=4, size=(64, 64))
    return str(p)


@pytest.fixture
def leftovers():
    """Temporary files an atomic write may have left behind under a folder."""

    def _find(root) -> list[str]:
        return [str(p) for p in Path(root).rglob(".*") if ".tmp-" in p.name or p.name.startswith(".upload-")]

    return _find
