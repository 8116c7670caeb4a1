"""Automation and retry policies shared by every asset module (one definition each).

`ON_NEW_DATA` is the one automation condition of every automated asset (curation, captions,
benchmarks, lineage report). Like `AutomationCondition.eager()` it requests a partition once none of
its inputs is missing or in progress, after

* the partition newly became missing while nothing was producing it (a new video whose own run is
  already queued does not get a second one), or
* an input was updated, or the asset's code version changed (new parameters, prompt, model),

but only if the partition is then really out of date (`InputsOutOfDate`): missing, or built by another
code version, or built from an input data version (the content hash of what the input wrote) that is
no longer the input's current one; or if an input is requested in the same tick (the chain below a
changed video runs in one run, as with `eager()`). Re-materialising an input with identical bytes (a touched file, a
backfill that reproduces its outputs) triggers nothing; a run that already built the partition from
the new input (the sensor's whole-chain run of a new video) is not repeated, however its events and
the automation ticks interleave. The test compares data versions, as Dagster's own stale status does
(`CachingStaleStatusResolver`), so the automation sensor evaluates it in the code server
(`use_user_code_server=True`).

`TRANSIENT_RETRY` retries a failed step with exponential backoff and jitter, by default 3 times after
10 s, 20 s, 40 s (+- 50%): for S3 hiccups, a captioning server that restarts, a connection reset.
``LONGVILA_RETRIES`` and ``LONGVILA_RETRY_DELAY_S`` change the count and the first delay (read when the
Definitions load). Failures that cannot heal (bad input, configuration errors) are raised as
`dagster.Failure(allow_retries=False)` (`assets.common.failure`) and fail at once.
"""

from __future__ import annotations

import os

from dagster import AutomationCondition, AutomationContext, AutomationResult, Backoff, Jitter, RetryPolicy


class InputsOutOfDate(AutomationCondition):
    """True for the candidate partitions that are missing, or whose latest materialisation used another
    code version or an input data version that is no longer current (Dagster's stale status, direct causes)."""

    @property
    def name(self) -> str:
        return "inputs_out_of_date"

    def evaluate(self, context: AutomationContext) -> AutomationResult:
        from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
        from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus

        # the latest events, not the tick's event bound: `in_progress` reads live run state, and a partition
        # whose run has just materialised it must be seen as built, not as missing
        subset = context.candidate_subset
        now = TemporalContext(effective_dt=context.evaluation_time, last_event_id=None)
        live = AssetGraphView(temporal_context=now, instance=context.asset_graph_view.instance,
                              asset_graph=context.asset_graph)
        resolver = CachingStaleStatusResolver(live.instance, context.asset_graph, loading_context=live)

        def out_of_date(partition):
            return resolver.get_status(context.key, partition) != StaleStatus.FRESH

        if subset.is_empty:
            true = subset
        elif subset.is_partitioned:
            true = subset.compute_intersection_with_partition_keys(
                {pk for pk in subset.expensively_compute_partition_keys() if out_of_date(pk)})
        else:
            true = subset if out_of_date(None) else context.get_empty_subset()
        return AutomationResult(context=context, true_subset=true)


def _on_new_data() -> AutomationCondition:
    unclaimed_missing = (AutomationCondition.newly_missing() & ~AutomationCondition.in_progress()).with_label(
        "newly_missing_and_not_in_progress")
    trigger = unclaimed_missing | AutomationCondition.any_deps_updated() | AutomationCondition.code_version_changed()
    return (
        trigger.since_last_handled()
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
        & (InputsOutOfDate() | AutomationCondition.any_deps_match(AutomationCondition.will_be_requested()))
    ).with_label("on_new_data")


ON_NEW_DATA = _on_new_data()

TRANSIENT_RETRY = RetryPolicy(max_retries=int(os.environ.get("LONGVILA_RETRIES") or 3),
                              delay=float(os.environ.get("LONGVILA_RETRY_DELAY_S") or 10.0),
                              backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)
