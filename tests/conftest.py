"""Suite-wide isolation: nothing a test does lands in the checkout's data/ folder by accident."""

import pytest


@pytest.fixture(autouse=True)
def _isolated_download_cache(tmp_path_factory, monkeypatch):
    # remote (s3://) videos are cached locally by the curation assets; keep each test's cache private
    monkeypatch.setenv("LONGVILA_CACHE_DIR", str(tmp_path_factory.mktemp("download-cache")))
