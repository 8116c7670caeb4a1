"""The stage trainer: data parallel x multi-modal sequence parallel, gradient accumulation, periodic
atomic checkpoints with exact resume, and a `from_pretrained`-loadable final export.

Run it through `torchrun -m training.train` (see training/train.py for the CLI) or call
`train(TrainArgs(...))` in a single process (world size 1).

Parallel layout: world = dp x (ulysses x ring) (training.sp.groups). Every rank of one SP group gets
the same packed rows; MM-SP shards them over the group (training.sp.sharding.mmsp_loss). Gradients are
summed over the whole world in one flat all-reduce after the last micro-batch (DDP-equivalent; each
rank's loss is its share of the token-sum divided by the step's global count of supervised tokens, so
the sum is exactly the gradient of the global mean token loss, whatever dp, SP and grad_accum are).

Determinism: the data order is a pure function of (seed, step) (training.data.StepOrder); the
checkpoint stores weights, optimizer, scheduler and every rank's RNG state, so a run killed after a
checkpoint and resumed continues with the same per-step losses as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from longvila.errors import InputError
from longvila.io import atomic_dir, sha256_tree, write_json

from . import checkpoint as ckpt
from .adapters import apply_lora, has_lora, merge_lora, set_rope_theta, set_trainable
from .data.packing import IGNORE_INDEX, collate_rows
from .data.stages import StepOrder, build_rows
from .metrics import MetricsWriter, peak_memory_mb, plot_loss_curve, read_metrics, summarize

TRAINER_VERSION = "trainer-v1"


@dataclass
class TrainArgs:
    profile: str = "smoke"
    recipe: str | None = None
    stage: str | None = None
    ulysses_degree: int | None = None
    ring_degree: int | None = None
    max_steps: int | None = None
    seed: int = 0
    metrics_out: str | None = None
    init_from: str | None = None
    output_dir: str = "runs/train"
    resume: bool = False
    data: list[str] = field(default_factory=list)
    micro_batch_size: int | None = None
    grad_accum: int | None = None
    lr: float | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    gradient_checkpointing: bool | None = None
    dtype: str = "auto"              # auto | float32 | bfloat16
    export: bool = True
    num_threads: int | None = None
    log_every: float = 5.0           # seconds between progress lines
    kill_after_step: int | None = None  # test hook: SIGKILL this process right after that step


# ------------------------------------------------------------------------------------------ helpers


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def die_with_parent() -> None:
    """Under torchrun: SIGKILL this rank if the torchrun agent dies (no orphaned ranks)."""
    if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ:
        from .launch import set_parent_death_signal

        ppid = os.getppid()
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != ppid:
            os._exit(137)


def init_distributed() -> torch.device:
    """Initialise torch.distributed from torchrun's environment (gloo on CPU, nccl on GPU)."""
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 0 and not dist.is_initialized():
        use_cuda = torch.cuda.is_available()
        backend = "nccl" if use_cuda else "gloo"
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def lr_lambda(schedule, total_steps: int) -> Callable[[int], float]:
    warm = schedule.warmup_for(total_steps)
    name = schedule.name

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / (warm + 1)
        if name == "constant":
            return 1.0
        span = max(1, total_steps - warm)
        prog = min(1.0, (step - warm) / span)
        if name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * prog))
        return max(0.0, 1.0 - prog)  # linear

    return f


class Log:
    def __init__(self, rank: int, pipes=None):
        self.rank = rank
        self.pipes = pipes

    def __call__(self, msg: str) -> None:
        if self.rank != 0:
            return
        print(msg, flush=True)
        if self.pipes is not None:
            try:
                self.pipes.log.info(msg)
            except Exception:  # noqa: BLE001 - logging must never fail training
                pass


def _open_pipes():
    """Only rank 0 opens the Dagster Pipes context (every rank opening it fails the run)."""
    if _rank() != 0 or "DAGSTER_PIPES_CONTEXT" not in os.environ:
        return None
    from dagster_pipes import open_dagster_pipes

    return open_dagster_pipes()


def _flat_allreduce(params: list[torch.nn.Parameter]) -> None:
    if _world() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    off = 0
    for p, g in zip(params, grads):
        n = g.numel()
        chunk = flat[off:off + n].view_as(g)
        if p.grad is None:
            p.grad = chunk.clone()
        else:
            p.grad.copy_(chunk)
        off += n


def _scale_grads(params, factor: float) -> None:
    if factor == 1.0:
        return
    for p in params:
        if p.grad is not None:
            p.grad.mul_(factor)


def _allreduce_scalar(x: float, group=None) -> float:
    if _world() == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t, group=group)
    return float(t.item())


def _supervised(labels: torch.Tensor, segment_ids: torch.Tensor | None) -> int:
    """Tokens that contribute to the loss after the model's label shift (and segment boundaries)."""
    from .model.modeling import shift_labels

    return int((shift_labels(labels, segment_ids) != IGNORE_INDEX).sum())


def _hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ model


def load_model_and_processor(args: TrainArgs, dtype: torch.dtype, device: torch.device, log: Log):
    from .model.profiles import build_model, get_profile, load_checkpoint
    from .model.processing import build_processor

    if args.init_from:
        log(f"[train] init from {args.init_from}")
        model, processor = load_checkpoint(args.init_from, dtype=dtype, device=device)
        return model, processor
    prof = get_profile(args.profile)
    if not prof.is_smoke:
        raise InputError(args.profile, "profile has no locally buildable tokenizer/weights; pass --init-from CKPT")
    model = build_model(prof, dtype=dtype, device=device, seed=args.seed)
    cfg = model.config
    processor = build_processor(cfg.tokens_per_frame, cfg.vision_config.image_size, prof.tokenizer_vocab)
    model.generation_config.eos_token_id = [processor.eos_token_id, processor.tokenizer.eos_token_id]
    model.generation_config.pad_token_id = processor.pad_token_id
    model.generation_config.bos_token_id = None
    model.config.text_config.eos_token_id = processor.eos_token_id
    model.config.text_config.pad_token_id = processor.pad_token_id
    return model, processor


# ------------------------------------------------------------------------------------------ data


@dataclass
class Phase:
    index: int
    start: int           # first global step of the phase
    steps: int
    max_length: int
    rope_theta: float | None


def plan_phases(stage, total_steps: int) -> list[Phase]:
    if not stage.phases:
        return [Phase(0, 0, total_steps, stage.max_length, stage.rope_theta)]
    want = [p.max_steps or 0 for p in stage.phases]
    if sum(want) == 0:
        want = [1] * len(stage.phases)
    # scale the per-phase steps to the total (e.g. --max-steps), keeping at least one step per phase
    scaled = [max(1, int(round(w * total_steps / sum(want)))) for w in want]
    scaled[-1] = max(1, total_steps - sum(scaled[:-1]))
    out, s = [], 0
    for i, (p, n) in enumerate(zip(stage.phases, scaled)):
        out.append(Phase(i, s, n, p.max_length, p.rope_theta))
        s += n
    return out


class StageRows:
    """Packed rows of one phase plus their deterministic step order."""

    def __init__(self, rows, order: StepOrder, report):
        self.rows = rows
        self.order = order
        self.report = report


def load_stage_records(args: TrainArgs, stage, log: Log) -> tuple[list[dict], list[str]]:
    from .data.passkey import passkey_records
    from .data.records import make_record, read_records

    paths = list(args.data)
    if not paths and stage.data.kind == "external":
        paths = list(stage.data.paths)
    if not paths and stage.data.kind == "passkey":
        recs = []
        for r in passkey_records(stage.data.num_samples or 32, seed=args.seed):
            recs.append(make_record(r["sample_id"], "passkey", [{"from": "human", "value": ""}, {"from": "gpt", "value": ""}],
                                    meta={"passkey": r["passkey"], "depth": r["depth"]}))
        return recs, ["<generated passkey set>"]
    if not paths:
        raise InputError(f"stage {stage.name}", f"no data given: pass --data PATH (dataset dir, .parquet or .tar) "
                                                f"for data kind {stage.data.kind!r}")
    recs = []
    for p in paths:
        got = read_records(p, kind=stage.data.kind)
        log(f"[data] {p}: {len(got)} records")
        recs.extend(got)
    return recs, paths


# ------------------------------------------------------------------------------------------ train


def train(args: TrainArgs) -> dict:
    """Train one stage (or the smoke batches without a recipe); returns a result dict (rank 0 writes
    it to <output_dir>/result.json)."""
    die_with_parent()
    device = init_distributed()
    rank, world = _rank(), _world()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    pipes_cm = _open_pipes()
    pipes = pipes_cm.__enter__() if pipes_cm is not None else None
    log = Log(rank, pipes)
    try:
        result = _train(args, device, rank, world, log, pipes)
    except BaseException as e:
        if pipes_cm is not None:
            pipes_cm.__exit__(type(e), e, e.__traceback__)
            pipes_cm = None
        raise
    finally:
        if pipes_cm is not None:
            pipes_cm.__exit__(None, None, None)
    return result


def _train(args: TrainArgs, device, rank: int, world: int, log: Log, pipes) -> dict:
    from .sp.groups import init_sp_groups, set_sp_groups

    t_start = time.time()
    recipe = stage = None
    if args.recipe:
        from .recipes import load_recipe

        recipe = load_recipe(args.recipe)
        stage = recipe.stage(args.stage or 1)
        if not args.init_from and args.profile != recipe.model_profile:
            args.profile = recipe.model_profile if args.profile == "smoke" else args.profile
    U = args.ulysses_degree or (stage.ulysses_degree if stage else 1)
    R = args.ring_degree or (stage.ring_degree if stage else 1)
    if world % (U * R):
        raise InputError("torchrun", f"world size {world} is not divisible by ulysses x ring = {U} x {R}")
    groups = init_sp_groups(U, R)
    set_sp_groups(groups if U * R > 1 else None)
    dp_size, dp_rank = groups.dp_size, groups.dp_rank

    if args.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    model, processor = load_model_and_processor(args, dtype, device, log)
    if U * R > 1:
        from .sp.attention import register_mmsp_attention

        register_mmsp_attention()

    micro = args.micro_batch_size or (stage.micro_batch_size if stage else 1)
    accum = args.grad_accum or (stage.grad_accum if stage else 1)
    total_steps = args.max_steps or (stage.max_steps if stage else 10)
    ckpt_every = args.checkpoint_every if args.checkpoint_every is not None else (stage.checkpoint_every if stage else 0)
    grad_ckpt = args.gradient_checkpointing if args.gradient_checkpointing is not None else (
        stage.gradient_checkpointing if stage else False)

    # ---- stage surgery
    if stage is not None:
        if stage.lora is not None:
            n = apply_lora(model, stage.lora.r, stage.lora.alpha, stage.lora.target_modules,
                           stage.lora.trainable_extra, stage.lora.dropout)
            log(f"[train] LoRA r={stage.lora.r} alpha={stage.lora.alpha} on {list(stage.lora.target_modules)}: "
                f"{n} trainable parameters")
        else:
            set_trainable(model, stage.trainable)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    if grad_ckpt:
        for sub in (getattr(model, "llm", None), getattr(model, "vision_tower", None)):
            if sub is not None and getattr(sub, "supports_gradient_checkpointing", False):
                sub.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    n_train = sum(p.numel() for p in params)
    log(f"[train] rank layout {groups!r}; stage {stage.name if stage else 'smoke'}; "
        f"{n_train} trainable / {sum(p.numel() for p in model.parameters())} parameters; dtype {dtype}")

    # ---- data
    phases = plan_phases(stage, total_steps) if stage else [Phase(0, 0, total_steps, 0, None)]
    data_paths: list[str] = []
    records = None
    smoke_source = None
    if stage is not None:
        records, data_paths = load_stage_records(args, stage, log)
    else:
        from .model.smoke_data import SmokeBatchSource

        smoke_source = SmokeBatchSource(processor=processor, seed=args.seed, batch_size=micro)

    def rows_for(ph: Phase) -> StageRows:
        rows, rep = build_rows(records, processor, ph.max_length, stage.num_frames, packing=stage.packing,
                               source=",".join(data_paths) or stage.name, log=log)
        log(f"[data] phase {ph.index}: max_length {ph.max_length}: {rep.used}/{rep.records} samples used "
            f"({rep.too_long} too long, {rep.bad} unusable) -> {rep.rows} packed rows, {rep.tokens} tokens")
        return StageRows(rows, StepOrder(len(rows), args.seed, dp_size, micro, accum), rep)

    # ---- optimiser
    opt_spec = stage.optimizer if stage else None
    lr = args.lr or (opt_spec.lr if opt_spec else 1e-3)
    if opt_spec is not None and opt_spec.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=lr, weight_decay=opt_spec.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(opt_spec.betas) if opt_spec else (0.9, 0.95),
                                      eps=opt_spec.eps if opt_spec else 1e-8,
                                      weight_decay=opt_spec.weight_decay if opt_spec else 0.0)
    from .recipes import ScheduleSpec

    sched_spec = stage.schedule if stage else ScheduleSpec(name="constant")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(sched_spec, total_steps))
    grad_clip = opt_spec.grad_clip if opt_spec else 1.0

    # ---- identity of this run (a checkpoint is only resumed by the same configuration)
    init_version = None
    if args.init_from:
        p = Path(args.init_from)
        init_version = sha256_tree(p) if p.is_dir() else str(args.init_from)
    data_versions = []
    for pth in data_paths:
        try:
            from .data.records import read_manifest

            data_versions.append(read_manifest(pth).get("content_hash"))
        except Exception:  # noqa: BLE001 - not our dataset layout: identify by path
            data_versions.append(pth)
    fingerprint = _hash_json({
        "recipe": recipe.stage_fingerprint(stage.name) if stage else None, "profile": args.profile,
        "init": init_version, "data": data_versions, "U": U, "R": R, "world": world, "micro": micro,
        "accum": accum, "steps": total_steps, "seed": args.seed, "lr": lr, "trainer": TRAINER_VERSION,
    })

    # ---- resume
    start_step = 0
    losses: list[float] = []
    out_dir = Path(args.output_dir)
    if args.resume:
        found = ckpt.latest_checkpoint(out_dir, log=log)
        if found is not None:
            st = json.loads((found / "trainer_state.json").read_text())
            if st.get("fingerprint") != fingerprint:
                log(f"[train] not resuming {found}: it belongs to a different configuration "
                    f"({st.get('fingerprint')} != {fingerprint}); starting fresh")
            else:
                loaded = ckpt.load_checkpoint_state(found, model)
                if loaded.optimizer is not None:
                    optimizer.load_state_dict(loaded.optimizer)
                if loaded.scheduler is not None:
                    scheduler.load_state_dict(loaded.scheduler)
                if len(loaded.rng) == world:
                    ckpt.set_rng_state(loaded.rng[rank])
                start_step = int(loaded.trainer_state["step"])
                losses = list(loaded.trainer_state.get("losses", []))
                log(f"[train] resumed from {found} at step {start_step}")
    if rank == 0 and not args.resume:
        for d in ckpt.list_checkpoints(out_dir):
            import shutil

            shutil.rmtree(d, ignore_errors=True)

    metrics = MetricsWriter(args.metrics_out if rank == 0 else None, append=args.resume and start_step > 0)

    # ---- loop
    use_sp = U * R > 1
    if use_sp:
        from .sp.sharding import mmsp_loss
    cur_phase: Phase | None = None
    cur_rows: StageRows | None = None
    last_log = 0.0
    t_loop = time.time()
    tokens_total = 0
    for step in range(start_step, total_steps):
        ph = next(p for p in phases if p.start <= step < p.start + p.steps)
        if cur_phase is None or ph.index != cur_phase.index:
            if ph.rope_theta is not None:
                set_rope_theta(model, ph.rope_theta, ph.max_length)
                log(f"[train] phase {ph.index}: max_length {ph.max_length}, rope_theta {ph.rope_theta:g}")
            if stage is not None:
                cur_rows = rows_for(ph)
            cur_phase = ph
        t0 = time.perf_counter()
        # gather this rank's micro-batches
        if stage is not None:
            idx = cur_rows.order.micro_batches(step - ph.start, dp_rank)
            pad_id = processor.pad_token_id or 0
            mbs = [collate_rows([cur_rows.rows[i] for i in mb], pad_id) for mb in idx]
        else:
            mbs = [smoke_source.batch(step * dp_size * accum + a * dp_size + dp_rank) for a in range(accum)]
            for b in mbs:
                if b.get("segment_ids") is None:
                    b["segment_ids"] = torch.where(b["attention_mask"].bool(), 0, -1).long()
        n_sup_local = sum(_supervised(b["labels"], b.get("segment_ids")) for b in mbs)
        n_tok_local = sum(int((b["segment_ids"] >= 0).sum()) if b.get("segment_ids") is not None
                          else int(b["attention_mask"].sum()) if b.get("attention_mask") is not None
                          else b["input_ids"].numel() for b in mbs)
        # global counts: every SP rank of a group holds the same rows -> sum over the DP group only
        n_sup = _allreduce_scalar(float(n_sup_local), groups.dp_group) if dp_size > 1 else float(n_sup_local)
        n_tok = _allreduce_scalar(float(n_tok_local), groups.dp_group) if dp_size > 1 else float(n_tok_local)
        if n_sup <= 0:
            raise InputError(f"step {step}", "the step's batches hold no supervised tokens")
        loss_sum_local = 0.0
        for b in mbs:
            b = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()}
            if b.get("pixel_values") is not None:
                b["pixel_values"] = b["pixel_values"].to(dtype)
            if use_sp:
                if grad_ckpt:
                    # the backward must run inside the MM-SP attention context: let mmsp_loss run it on
                    # (local token-loss sum / n_glob) and rescale so the grads accumulate as sum / n_sup
                    n_glob = _supervised(b["labels"].cpu(), b["segment_ids"].cpu())
                    c = n_glob / n_sup
                    _scale_grads(params, 1.0 / c)
                    loss, n_glob = mmsp_loss(model, b, groups, backward=True)
                    _scale_grads(params, c)
                    loss_sum_local += float(loss.detach()) * n_glob
                    continue
                loss, n_glob = mmsp_loss(model, b, groups)
                # value: the SP group's mean token loss; gradient: this rank's share of the token sum / n_glob
                part = loss * float(n_glob)
            else:
                fwd = {k: b[k] for k in ("input_ids", "labels", "pixel_values", "segment_ids", "position_ids",
                                          "attention_mask") if b.get(k) is not None}
                if "segment_ids" in fwd:
                    fwd.pop("attention_mask", None)
                out = model(**fwd)
                n_b = _supervised(b["labels"].cpu(), b["segment_ids"].cpu() if b.get("segment_ids") is not None else None)
                part = out.loss * float(n_b)
            (part / n_sup).backward()
            loss_sum_local += float(part.detach())
        _flat_allreduce(params)
        gnorm = None
        if grad_clip:
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        # loss_sum_local is the token-loss sum of this SP group's rows (same on every SP rank): sum over DP
        loss_val = (_allreduce_scalar(loss_sum_local, groups.dp_group) if dp_size > 1 else loss_sum_local) / n_sup
        dt = time.perf_counter() - t0
        tokens_total += int(n_tok)
        losses.append(loss_val)
        rec = {"step": step + 1, "loss": loss_val, "tokens": int(n_tok), "supervised_tokens": int(n_sup),
               "seconds": dt, "tokens_per_s": n_tok / dt if dt > 0 else 0.0, "lr": scheduler.get_last_lr()[0],
               "grad_norm": gnorm, "peak_memory_mb": peak_memory_mb(device),
               "stage": stage.name if stage else "smoke", "phase": ph.index}
        metrics.write(rec)
        now = time.time()
        if now - last_log >= args.log_every or step + 1 == total_steps or step == start_step:
            last_log = now
            log(f"[train] step {step + 1}/{total_steps} loss {loss_val:.4f} tokens {int(n_tok)} "
                f"{rec['tokens_per_s']:.0f} tok/s lr {rec['lr']:.2e}")
        # ---- checkpoint
        if ckpt_every and ((step + 1) % ckpt_every == 0) and step + 1 < total_steps:
            _save(model, optimizer, scheduler, out_dir, step + 1, losses, fingerprint, args, world, rank, log)
        if args.kill_after_step is not None and step + 1 == args.kill_after_step:
            log(f"[train] test hook: killing rank {rank} after step {step + 1}")
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    metrics.close()
    # the last checkpoint, so a re-run with --resume is a no-op
    if total_steps > start_step:
        _save(model, optimizer, scheduler, out_dir, total_steps, losses, fingerprint, args, world, rank, log)
    loop_s = time.time() - t_loop

    # ---- export (rank 0)
    result: dict[str, Any] = {
        "stage": stage.name if stage else "smoke", "recipe": recipe.name if recipe else None,
        "steps": total_steps, "start_step": start_step, "world_size": world, "dp_size": dp_size,
        "ulysses_degree": U, "ring_degree": R, "fingerprint": fingerprint,
        "final_loss": losses[-1] if losses else None, "loop_seconds": loop_s,
        "tokens_per_s": tokens_total / loop_s if loop_s > 0 and tokens_total else None,
        "data": data_paths, "data_versions": data_versions, "init_from": args.init_from,
        "init_version": init_version, "trainer_version": TRAINER_VERSION,
    }
    if rank == 0:
        if args.export:
            final = out_dir / "final"
            if has_lora(model):
                merge_lora(model)
            model.eval()
            with atomic_dir(final) as tmp:
                model.save_pretrained(tmp)
                processor.save_pretrained(tmp)
            result["final_dir"] = str(final)
            result["data_version"] = sha256_tree(final)
        if args.metrics_out and Path(args.metrics_out).exists():
            recs = read_metrics(args.metrics_out)
            result["metrics"] = summarize(recs)
            if recs:
                png = out_dir / "loss_curve.png"
                plot_loss_curve(recs, png, title=f"{result['stage']} loss")
                result["loss_curve"] = str(png)
        result["wall_seconds"] = time.time() - t_start
        write_json(out_dir / "result.json", result)
        log(f"[train] done: final loss {result['final_loss']}, data version {result.get('data_version', '-')[:16]}")
        if pipes is not None:
            _report_pipes(pipes, result)
    if _world() > 1:
        dist.barrier()
    return result


def _save(model, optimizer, scheduler, out_dir, step, losses, fingerprint, args, world, rank, log):
    states = [None] * world if world > 1 else None
    if world > 1:
        dist.all_gather_object(states, ckpt.rng_state())
    else:
        states = [ckpt.rng_state()]
    if rank == 0:
        d = ckpt.save_checkpoint(ckpt.step_dir(out_dir, step), model, optimizer, scheduler,
                                 {"step": step, "data_position": step, "losses": losses, "fingerprint": fingerprint,
                                  "recipe": args.recipe, "stage": args.stage, "world_size": world}, states)
        ckpt.prune_checkpoints(out_dir, keep=args.keep_checkpoints)
        log(f"[train] checkpoint {d}")
    if world > 1:
        dist.barrier()


def _report_pipes(pipes, result: dict) -> None:
    import base64

    md = {
        "final_loss": {"raw_value": result.get("final_loss"), "type": "float"},
        "tokens_per_s": {"raw_value": result.get("tokens_per_s") or 0.0, "type": "float"},
        "steps": {"raw_value": int(result["steps"]), "type": "int"},
        "resumed_from_step": {"raw_value": int(result["start_step"]), "type": "int"},
        "world_size": {"raw_value": int(result["world_size"]), "type": "int"},
        "sp_degree": {"raw_value": int(result["ulysses_degree"] * result["ring_degree"]), "type": "int"},
        "checkpoint": {"raw_value": result.get("final_dir", ""), "type": "path"},
        "checkpoint_sha256": {"raw_value": result.get("data_version", ""), "type": "text"},
        "init_from_sha256": {"raw_value": result.get("init_version") or "", "type": "text"},
        "dataset_versions": {"raw_value": result.get("data_versions", []), "type": "json"},
    }
    if result.get("metrics"):
        md["peak_memory_mb"] = {"raw_value": float(result["metrics"].get("peak_memory_mb", 0.0)), "type": "float"}
    if result.get("loss_curve"):
        b64 = base64.b64encode(Path(result["loss_curve"]).read_bytes()).decode()
        md["loss_curve"] = {"raw_value": f"![loss curve](data:image/png;base64,{b64})", "type": "md"}
        md["loss_curve_path"] = {"raw_value": result["loss_curve"], "type": "path"}
    pipes.report_asset_materialization(metadata=md, data_version=result.get("data_version"))
