"""Which asset partitions are stale, and why (Dagster's own data-version machinery).

Dagster's `CachingStaleStatusResolver` reports an asset partition STALE when its code version
changed or when a *direct* upstream got a new data version since it was materialised. It does not
propagate: a grandchild of a changed video only becomes stale once its parent has been
re-materialised with a different data version. `stale_report` returns both views: the direct causes
from Dagster, and the transitive closure over the asset graph (what will have to be recomputed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

from dagster import AssetKey, DagsterInstance, Definitions
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus


@dataclass
class StaleReport:
    status: dict = field(default_factory=dict)  # (AssetKey, partition) -> StaleStatus
    causes: dict = field(default_factory=dict)  # (AssetKey, partition) -> ["reason (upstream)"]
    transitive: set = field(default_factory=set)  # (AssetKey, partition) stale directly or via an upstream

    def directly_stale(self) -> set:
        return {k for k, s in self.status.items() if s == StaleStatus.STALE}

    def stale_assets(self, partition: Optional[str], transitive: bool = True) -> set[str]:
        pool = self.transitive if transitive else self.directly_stale()
        return {k.to_user_string() for (k, p) in pool if p == partition}


def stale_report(
    defs: Definitions,
    instance: DagsterInstance,
    partitions: Iterable[str],
    asset_keys: Optional[Iterable[AssetKey]] = None,
) -> StaleReport:
    """Stale status of `asset_keys` (default: every materialisable asset partitioned like the
    curation lineage) for each partition key in `partitions`."""
    from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
    from dagster._time import get_current_datetime

    graph = defs.resolve_asset_graph()
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    resolver = CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)
    keys = list(asset_keys or [k for k in graph.toposorted_asset_keys
                               if graph.get(k).is_materializable and graph.get(k).is_partitioned])
    keyset = set(keys)
    rep = StaleReport()
    for pk in partitions:
        for k in keys:  # toposorted: parents first
            st = resolver.get_status(k, pk)
            rep.status[(k, pk)] = st
            rep.causes[(k, pk)] = [
                c.reason + (f" ({c.dependency.asset_key.to_user_string()})" if c.dependency else "")
                for c in resolver.get_stale_causes(k, pk)
            ]
            up = [p for p in graph.get(k).parent_keys if p in keyset]
            if st == StaleStatus.STALE or any((p, pk) in rep.transitive for p in up):
                rep.transitive.add((k, pk))
    return rep


__all__ = ["StaleReport", "stale_report", "StaleStatus"]
