"""Partitions shared by every per-video asset.

One dynamic partition per raw video. The key is `longvila.keys.partition_key_for(relative path)`
(relative to the source root), so a video that changes keeps its partition and gets a new data
version instead. Partitions are added by the new-video sensor (`orchestration.sensors`) and by
`longvila demo`, both from the scan of `longvila.sources`. A video removed from the source keeps its
partition (and history); the manifest marks it removed.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

from dagster import DynamicPartitionsDefinition

VIDEOS_PARTITIONS_NAME = "videos"

videos = DynamicPartitionsDefinition(name=VIDEOS_PARTITIONS_NAME)


@contextlib.contextmanager
def partitioned_checks() -> Iterator[None]:
    """Build per-video asset checks quietly. Per-partition checks (`AssetCheckSpec.partitions_def`) are
    a preview feature in dagster 1.13; we want check results recorded per video, so only that preview
    notice is silenced, and only while the Definitions are built."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*partitions_def on an AssetCheckSpec.*")
        yield
