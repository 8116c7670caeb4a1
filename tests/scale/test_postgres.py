"""The Dagster instance on PostgreSQL (deploy/dagster-postgres.yaml) next to SQLite: same storage calls,
same results, and the bulk operations the scale work relies on."""

from __future__ import annotations

from dagster import AssetKey, AssetMaterialization, AssetRecordsFilter

from orchestration.bulk import add_partitions


def test_instance_uses_the_configured_storage(instance, backend):
    storages = {type(s).__name__ for s in (instance.run_storage, instance.event_log_storage,
                                           instance.schedule_storage)}
    prefix = "Postgres" if backend == "postgres" else "Sqlite"
    assert all(name.startswith(prefix) for name in storages), storages
    # the project's run queue and pool limits hold on either storage (orchestration.instance)
    assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"


def test_materialisations_and_tags_round_trip(instance):
    key = AssetKey("raw_video")
    for i in range(3):
        instance.report_runless_asset_event(AssetMaterialization(
            key, partition=f"v{i}", tags={"dagster/data_version": f"sha{i}", "dagster/code_version": "c1"}))
    recs = instance.fetch_materializations(AssetRecordsFilter(asset_key=key, asset_partitions=["v1"]), limit=5).records
    assert [r.asset_materialization.tags["dagster/data_version"] for r in recs] == ["sha1"]
    assert instance.get_materialized_partitions(key) == {"v0", "v1", "v2"}


def test_partition_add_above_sqlite_variable_limit(instance):
    """40k keys go in chunks on both backends. Stock SQLite allows 32,766 host parameters per statement
    and Dagster checks existing keys with one `IN (...)`, so one request of 40k keys fails there (Debian's
    SQLite, used here, is built with 250,000, so that failure is not reproduced by this test)."""
    keys = [f"video-{i:06d}" for i in range(40_000)]
    assert add_partitions(instance, "videos", keys) == 4
    assert add_partitions(instance, "videos", keys[:15_000] + ["video-new"], chunk=10_000) == 2  # re-adds skipped
    got = instance.get_dynamic_partitions("videos")
    assert len(got) == 40_001 and got[0] == "video-000000" and got[-1] == "video-new"

