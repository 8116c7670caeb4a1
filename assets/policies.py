"""Automation and retry policies shared by every asset module (one definition each).

`ON_NEW_DATA` is the one automation condition of every automated asset (curation, captions,
benchmarks, lineage report). Like `AutomationCondition.eager()` it requests a partition once none of
its inputs is missing or in progress, but only when

* the partition newly became missing and nothing is producing it yet (a new video whose own run is
  already queued does not get a second run, even if that run fails), or
* an input got a *new data version* (the content hash of what it wrote) from a run that did not
  already target this asset: re-materialising an input with identical bytes (a touched file, a
  backfill that reproduces its outputs) triggers nothing, or
* the asset's code version changed (new parameters, prompt, model): every partition re-runs.

`TRANSIENT_RETRY` retries a failed step with exponential backoff and jitter, by default 3 times after
10 s, 20 s, 40 s (+- 50%): for S3 hiccups, a captioning server that restarts, a connection reset.
``LONGVILA_RETRIES`` and ``LONGVILA_RETRY_DELAY_S`` change the count and the first delay (read when the
Definitions load). Failures that cannot heal (bad input, configuration errors) are raised as
`dagster.Failure(allow_retries=False)` (`assets.common.failure`) and fail at once.
"""

from __future__ import annotations

import os

from dagster import AutomationCondition, Backoff, Jitter, RetryPolicy


def _on_new_data() -> AutomationCondition:
    new_data = AutomationCondition.any_deps_match(
        (AutomationCondition.data_version_changed() & ~AutomationCondition.executed_with_root_target())
        .with_label("new_data_version_not_from_this_run")
        | AutomationCondition.will_be_requested()
    ).with_label("any_dep_has_new_data_version")
    unclaimed_missing = (AutomationCondition.newly_missing() & ~AutomationCondition.in_progress()).with_label(
        "newly_missing_and_not_in_progress")
    return (
        (unclaimed_missing | new_data | AutomationCondition.code_version_changed()).since_last_handled()
        & ~AutomationCondition.any_deps_missing()
        & ~AutomationCondition.any_deps_in_progress()
        & ~AutomationCondition.in_progress()
    ).with_label("on_new_data")


ON_NEW_DATA = _on_new_data()

TRANSIENT_RETRY = RetryPolicy(max_retries=int(os.environ.get("LONGVILA_RETRIES") or 3),
                              delay=float(os.environ.get("LONGVILA_RETRY_DELAY_S") or 10.0),
                              backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)
