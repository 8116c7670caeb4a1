"""The batches a training run consumes: per step and data-parallel rank, `grad_accum` micro-batch dicts in
the MM-SP batch format (training.sp.sharding), a pure function of (seed, step), so a resumed run sees
exactly the batches an uninterrupted one would.

    data = StageBatches(records, processor, stage, phases, seed=0, dp_size=2, micro=1, accum=2, source=...)
    data = SmokeBatches(processor, seed=0, dp_size=2, micro=2, accum=1)   # no recipe: random smoke batches
    data.phase_at(step) -> Phase;  data.micro_batches(step, dp_rank) -> list[dict]

`plan_phases` splits a stage's steps over its context-extension phases (max length + RoPE base each);
`stage_records` reads a stage's records (dataset dirs, Parquet, webdataset, the generated passkey set)
together with each source's verified content version (training.data.records.read_versioned).
"""

from __future__ import annotations

from dataclasses import dataclass

from longvila.errors import InputError

from .packing import collate_rows
from .stages import StepOrder, build_rows


@dataclass(frozen=True)
class Phase:
    index: int
    start: int           # first global step of the phase
    steps: int
    max_length: int
    rope_theta: float | None


def plan_phases(stage, total_steps: int) -> list[Phase]:
    """The stage's phases with their step ranges, scaled to `total_steps` (at least one step per phase)."""
    if stage is None:
        return [Phase(0, 0, total_steps, 0, None)]
    if not stage.phases:
        return [Phase(0, 0, total_steps, stage.max_length, stage.rope_theta)]
    want = [p.max_steps or 0 for p in stage.phases]
    if sum(want) == 0:
        want = [1] * len(stage.phases)
    scaled = [max(1, int(round(w * total_steps / sum(want)))) for w in want]
    scaled[-1] = max(1, total_steps - sum(scaled[:-1]))
    out, s = [], 0
    for i, (p, n) in enumerate(zip(stage.phases, scaled)):
        out.append(Phase(i, s, n, p.max_length, p.rope_theta))
        s += n
    return out


def stage_records(stage, paths: list[str], seed: int, log=print) -> tuple[list[dict], list[str | None]]:
    """Records of a stage and the content version of each source (in `paths` order)."""
    from .build import passkey_set
    from .records import read_versioned

    if not paths and stage.data.kind == "passkey":
        return passkey_set(stage.data.num_samples or 32, seed, stage.data.options), []
    if not paths:
        raise InputError(f"stage {stage.name}", f"no data given: pass --data PATH (dataset dir, .parquet or .tar) "
                                                f"for data kind {stage.data.kind!r}")
    records, versions = [], []
    for p in paths:
        got, version = read_versioned(p, kind=stage.data.kind)
        log(f"[data] {p}: {len(got)} records, version {str(version)[:16]}")
        records.extend(got)
        versions.append(version)
    return records, versions


class StageBatches:
    """Packed rows of a recipe stage, rebuilt at each phase change (max length), in StepOrder."""

    def __init__(self, records, processor, stage, phases: list[Phase], *, seed: int, dp_size: int, micro: int,
                 accum: int, source: str, log=print):
        self.records, self.processor, self.stage, self.phases = records, processor, stage, phases
        self.seed, self.dp_size, self.micro, self.accum = seed, dp_size, micro, accum
        self.source, self.log = source, log
        self._phase: Phase | None = None
        self._rows: list = []
        self._order: StepOrder | None = None

    def phase_at(self, step: int) -> Phase:
        return next(p for p in self.phases if p.start <= step < p.start + p.steps)

    def _enter(self, ph: Phase) -> None:
        rows, rep = build_rows(self.records, self.processor, ph.max_length, self.stage.num_frames,
                               packing=self.stage.packing, source=self.source, log=self.log)
        self.log(f"[data] phase {ph.index}: max_length {ph.max_length}: {rep.used}/{rep.records} samples used "
                 f"({rep.too_long} too long, {rep.bad} unusable) -> {rep.rows} packed rows, {rep.tokens} tokens")
        self._phase, self._rows = ph, rows
        self._order = StepOrder(len(rows), self.seed, self.dp_size, self.micro, self.accum)

    def micro_batches(self, step: int, dp_rank: int) -> list[dict]:
        ph = self.phase_at(step)
        if ph != self._phase:
            self._enter(ph)
        pad_id = self.processor.pad_token_id or 0
        return [collate_rows([self._rows[i] for i in mb], pad_id)
                for mb in self._order.micro_batches(step - ph.start, dp_rank)]


class SmokeBatches:
    """Random smoke conversations (training.model.smoke_data) when no recipe is given."""

    def __init__(self, processor, *, seed: int, dp_size: int, micro: int, accum: int, total_steps: int):
        from ..model.smoke_data import SmokeBatchSource

        self.source = SmokeBatchSource(processor=processor, seed=seed, batch_size=micro)
        self.dp_size, self.accum = dp_size, accum
        self.phases = plan_phases(None, total_steps)

    def phase_at(self, step: int) -> Phase:
        return self.phases[0]

    def micro_batches(self, step: int, dp_rank: int) -> list[dict]:
        return [self.source.batch(step * self.dp_size * self.accum + a * self.dp_size + dp_rank)
                for a in range(self.accum)]


def batch_tokens(b: dict) -> int:
    """Real (non-padding) tokens of a batch."""
    return int((b["segment_ids"] >= 0).sum())
