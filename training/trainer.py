"""The stage trainer: data parallel x multi-modal sequence parallel, FSDP2-sharded model states, gradient
accumulation, periodic atomic checkpoints with exact resume, and a `from_pretrained`-loadable export.

Run it through `torchrun -m training.train` (see training/train.py for the CLI) or call
`train(TrainArgs(...))` in a single process (world size 1, replicated states).

Organisation (as torchtitan's trainer): `train` resolves the arguments once into a validated
`training.config.RunConfig` and runs a `Trainer`, whose short methods are the phases of a run:
`build_model` -> `shard` -> `build_optimizer` -> `load_data` -> `resume` -> `step` ... `save` -> `export`.

Parallel layout: world = dp x (ulysses x ring) (training.sp.groups). Every rank of one SP group gets the
same packed rows; MM-SP shards them over the group. Model states are sharded over all ranks with FSDP2
(training.fsdp), or replicated (the in-process path, and the reference the FSDP path is tested against).

Loss normalisation, the one path for both: each micro-batch's loss is the token-loss sum over all ranks
divided by its global count of supervised tokens (mmsp_loss, count_over="world"); the trainer weights
micro-batch a by n_a / n_step (n_step: the step's global count) by rescaling the accumulated gradients
around its backward, and every reduction is a SUM over the world (FSDP reduce-scatter with divide factor
1, or `sync_gradients(..., dp_reduce="sum")`). The result is exactly the gradient of the global mean token
loss of the step, whatever dp, SP, grad_accum and the packing are.

Determinism: the data order is a pure function of (seed, step) (training.data.batches); a checkpoint holds
weights, optimizer, scheduler and every rank's RNG state, so a run killed after a checkpoint and resumed
continues with the same per-step losses as an uninterrupted run. Checkpoints live in the directory of the
run's identity (training.config, training.checkpoint); rank 0 holds the output directory's writer lock
(longvila.locks) for the whole run.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

from longvila.errors import InputError
from longvila.io import sha256_tree, write_json
from longvila.locks import DirLock

from . import checkpoint as ckpt
from . import fsdp, runtime
from .adapters import apply_lora, merge_lora_state, set_rope_theta, set_trainable
from .config import TRAINER_VERSION, RunConfig, TrainArgs, fingerprint, resolve
from .data.batches import SmokeBatches, StageBatches, batch_tokens, plan_phases, stage_records
from .data.packing import IGNORE_INDEX
from .metrics import MetricsWriter, peak_memory_mb, plot_loss_curve, read_metrics, summarize

__all__ = ["TRAINER_VERSION", "TrainArgs", "Trainer", "train"]


def lr_lambda(schedule, total_steps: int) -> Callable[[int], float]:
    warm = schedule.warmup_for(total_steps)
    name = schedule.name

    def f(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / (warm + 1)
        if name == "constant":
            return 1.0
        prog = min(1.0, (step - warm) / max(1, total_steps - warm))
        if name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * prog))
        return max(0.0, 1.0 - prog)  # linear

    return f


def supervised_tokens(batch: dict) -> int:
    """Tokens that contribute to the loss after the label shift (and segment boundaries)."""
    from .model.modeling import shift_labels

    return int((shift_labels(batch["labels"], batch.get("segment_ids")) != IGNORE_INDEX).sum())


def _scale_grads(params, factor: float) -> None:
    if factor != 1.0:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(factor)


def load_model_and_processor(cfg: RunConfig, dtype: torch.dtype, device: torch.device | str, log):
    from .model.processing import build_processor
    from .model.profiles import build_model, get_profile, load_checkpoint

    if cfg.init_from:
        log(f"[train] init from {cfg.init_from}")
        return load_checkpoint(cfg.init_from, dtype=dtype, device=device)
    prof = get_profile(cfg.profile)
    if not prof.is_smoke:
        raise InputError(cfg.profile, "profile has no locally buildable tokenizer/weights; pass --init-from CKPT")
    model = build_model(prof, dtype=dtype, device=device, seed=cfg.seed)
    mc = model.config
    processor = build_processor(mc.tokens_per_frame, mc.vision_config.image_size, prof.tokenizer_vocab)
    model.generation_config.eos_token_id = [processor.eos_token_id, processor.tokenizer.eos_token_id]
    model.generation_config.pad_token_id = processor.pad_token_id
    model.generation_config.bos_token_id = None
    mc.text_config.eos_token_id = processor.eos_token_id
    mc.text_config.pad_token_id = processor.pad_token_id
    return model, processor


class Trainer:
    """One training run of a resolved `RunConfig` on this rank (see module doc)."""

    def __init__(self, cfg: RunConfig, device: torch.device, log, pipes=None):
        self.cfg, self.device, self.log, self.pipes = cfg, device, log, pipes
        self.rank, self.world = runtime.rank(), runtime.world()
        self.out = Path(cfg.output_dir)
        self.losses: list[float] = []
        self.phase = None

    # ---------------------------------------------------------------------------------- set-up
    def build_model(self) -> None:
        from .sp.groups import init_sp_groups, set_sp_groups

        cfg = self.cfg
        self.groups = init_sp_groups(cfg.ulysses, cfg.ring)
        set_sp_groups(self.groups if cfg.sp_degree > 1 else None)
        torch.manual_seed(cfg.seed)
        where = "cpu" if cfg.sharding == "fsdp" else self.device  # FSDP moves each shard to the device
        self.model, self.processor = load_model_and_processor(cfg, cfg.master_dtype, where, self.log)
        if cfg.stage is None:
            self.model.requires_grad_(True)
        elif cfg.stage.lora is not None:
            lo = cfg.stage.lora
            n = apply_lora(self.model, lo.r, lo.alpha, lo.target_modules, lo.trainable_extra, lo.dropout)
            self.log(f"[train] LoRA r={lo.r} alpha={lo.alpha} on {list(lo.target_modules)}: {n} trainable parameters")
        else:
            set_trainable(self.model, cfg.stage.trainable)
        if cfg.activation_checkpointing:  # per decoder layer (transformers' GradientCheckpointingLayer)
            for sub in (self.model.llm, self.model.vision_tower):
                if getattr(sub, "supports_gradient_checkpointing", False):
                    sub.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.model.train()

    def shard(self) -> None:
        cfg = self.cfg
        self.loss_module = fsdp.LossModule(self.model, self.groups)
        if cfg.sharding == "fsdp":
            fsdp.shard(self.loss_module, self.device, cfg.compute_dtype, cfg.cpu_offload)
        self.params = [p for p in self.loss_module.parameters() if p.requires_grad]
        total = sum(p.numel() for p in self.loss_module.parameters())
        self.log(f"[train] rank layout {self.groups!r}; stage {cfg.stage_name}; {cfg.sharding} "
                 f"(compute {cfg.compute_dtype}, master {cfg.master_dtype}{', cpu offload' if cfg.cpu_offload else ''}"
                 f"{', activation checkpointing' if cfg.activation_checkpointing else ''}); "
                 f"{sum(p.numel() for p in self.params)} trainable / {total} parameters")

    def build_optimizer(self) -> None:
        spec = self.cfg.optimizer
        if spec.name == "sgd":
            self.optimizer = torch.optim.SGD(self.params, lr=spec.lr, weight_decay=spec.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(self.params, lr=spec.lr, betas=tuple(spec.betas), eps=spec.eps,
                                               weight_decay=spec.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(self.cfg.schedule, self.cfg.total_steps))

    def load_data(self) -> None:
        """The step batches, and the run identity (which includes the versions of the data read)."""
        cfg = self.cfg
        if cfg.stage is None:
            self.data = SmokeBatches(self.processor, seed=cfg.seed, dp_size=cfg.dp_size, micro=cfg.micro_batch,
                                     accum=cfg.grad_accum, total_steps=cfg.total_steps)
            self.data_versions: list = []
        else:
            records, self.data_versions = stage_records(cfg.stage, list(cfg.data), cfg.seed, self.log)
            self.data = StageBatches(records, self.processor, cfg.stage, plan_phases(cfg.stage, cfg.total_steps),
                                     seed=cfg.seed, dp_size=cfg.dp_size, micro=cfg.micro_batch, accum=cfg.grad_accum,
                                     source=",".join(cfg.data) or cfg.stage.name, log=self.log)
        init = Path(cfg.init_from) if cfg.init_from else None
        local = init is not None and init.is_dir()
        self.init_version = sha256_tree(init) if local else cfg.init_from
        self.init_path = str(init.resolve()) if local else cfg.init_from  # `final` resolved to its export
        self.identity = cfg.identity(self.data_versions, self.init_version)
        self.fingerprint = fingerprint(self.identity)
        self.run_dir = ckpt.run_dir(self.out, self.fingerprint)

    # ---------------------------------------------------------------------------------- checkpoints
    def resume(self) -> int:
        """Load the newest valid checkpoint of this run identity (with --resume); the step to start at."""
        step = 0
        if self.rank == 0:
            ckpt.start_run(self.out, self.fingerprint, self.identity)
            gone = ckpt.prune_runs(self.out, self.fingerprint, self.cfg.keep_runs)
            if gone:
                self.log(f"[train] removed the checkpoints of {len(gone)} older run identities")
            if self.cfg.resume:
                found = ckpt.latest_checkpoint(self.run_dir, log=self.log)
                step = int(ckpt.load_checkpoint(found, weights=False).trainer_state["step"]) if found else 0
            else:
                ckpt.prune_checkpoints(self.run_dir, keep=0)
        step = runtime.broadcast_int(step)
        if step == 0:
            if self.cfg.resume:
                self.log(f"[train] no checkpoint of run {self.fingerprint} in {self.out}: starting fresh")
            return 0
        path = ckpt.step_dir(self.run_dir, step)
        state = ckpt.load_checkpoint(path) if self.rank == 0 else None  # only node 0's disk need hold it
        if self.rank == 0 and state.trainer_state.get("fingerprint") != self.fingerprint:
            raise ckpt.CheckpointError(str(path), "belongs to another run identity")
        scheduler, rngs, trainer_state = runtime.broadcast_object(
            (state.scheduler, state.rng, state.trainer_state) if self.rank == 0 else None)
        model_state, optim_state = (state.model, state.optimizer) if state else ({}, None)
        fsdp.load_full_state(self.model, self.optimizer, model_state, optim_state)
        self.scheduler.load_state_dict(scheduler)
        if len(rngs) == self.world:
            ckpt.set_rng_state(rngs[self.rank])
        self.losses = list(trainer_state.get("losses", []))
        self.log(f"[train] resumed from {path} at step {step}")
        return step

    def save(self, step: int) -> None:
        """Checkpoint after `step` steps (collective: gathers the full states on rank 0)."""
        model_state, optim_state = fsdp.full_state(self.model, self.optimizer)
        rngs = [None] * self.world
        if self.world > 1:
            dist.all_gather_object(rngs, ckpt.rng_state())
        else:
            rngs = [ckpt.rng_state()]
        if self.rank == 0:
            self.lock.check()
            trainer_state = {"step": step, "data_position": step, "losses": self.losses,
                             "fingerprint": self.fingerprint, "stage": self.cfg.stage_name, "world_size": self.world}
            d = ckpt.save_checkpoint(ckpt.step_dir(self.run_dir, step), ckpt.CheckpointState(
                model_state, optim_state, self.scheduler.state_dict(), rngs, trainer_state))
            ckpt.prune_checkpoints(self.run_dir, keep=self.cfg.keep_checkpoints)
            self.log(f"[train] checkpoint {d}")
        runtime.barrier()

    # ---------------------------------------------------------------------------------- the step
    def _enter_phase(self, step: int) -> None:
        ph = self.data.phase_at(step)
        if ph != self.phase:
            if ph.rope_theta is not None:
                set_rope_theta(self.model, ph.rope_theta, ph.max_length)
                self.log(f"[train] phase {ph.index}: max_length {ph.max_length}, rope_theta {ph.rope_theta:g}")
            self.phase = ph

    def step(self, step: int) -> dict:
        """One optimizer step (all micro-batches); returns its metrics record."""
        t0 = time.perf_counter()
        self._enter_phase(step)
        mbs = self.data.micro_batches(step, self.groups.dp_rank)
        # global counts: every SP rank of a group holds the same rows, so sum over the DP group only
        counts = runtime.all_sum([supervised_tokens(b) for b in mbs] + [sum(batch_tokens(b) for b in mbs)],
                                 self.groups.dp_group)
        n_mb, n_tok = counts[:-1], counts[-1]
        n_step = sum(n_mb)
        if n_step <= 0:
            raise InputError(f"step {step}", "the step's batches hold no supervised tokens")
        loss_sum = 0.0
        for a, b in enumerate(mbs):
            b = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in b.items()}
            # accumulated grads are in units of 1/n_step: express them in the micro-batch's 1/n_a and back
            weight = n_mb[a] / n_step if n_mb[a] else 1.0
            _scale_grads(self.params, 1.0 / weight if a else 1.0)
            loss, n_glob = self.loss_module(b)
            _scale_grads(self.params, weight)
            if n_glob != n_mb[a]:
                raise RuntimeError(f"step {step}: mmsp_loss counted {n_glob} supervised tokens, the trainer {n_mb[a]}")
            loss_sum += float(loss.detach()) * n_mb[a]
        if self.cfg.sharding == "replicate":
            from .sp.sharding import sync_gradients

            sync_gradients(self.params, self.groups, dp_reduce="sum")
        gnorm = self._clip()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_val = loss_sum / n_step
        self.losses.append(loss_val)
        dt = time.perf_counter() - t0
        return {"step": step + 1, "loss": loss_val, "tokens": int(n_tok), "supervised_tokens": int(n_step),
                "seconds": dt, "tokens_per_s": n_tok / dt if dt > 0 else 0.0, "lr": self.scheduler.get_last_lr()[0],
                "grad_norm": gnorm, "peak_memory_mb": peak_memory_mb(self.device), "stage": self.cfg.stage_name,
                "phase": self.phase.index}

    def _clip(self) -> float | None:
        clip = self.cfg.optimizer.grad_clip
        if not clip:
            return None
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    # ---------------------------------------------------------------------------------- export
    def export(self) -> tuple[str, str] | None:
        """Gather the weights (collective) and publish them as an immutable export (rank 0); (dir, sha256)."""
        from .export import plain_model, publish

        state, _ = fsdp.full_state(self.model)
        if self.rank != 0:
            return None
        lora = self.cfg.stage.lora if self.cfg.stage is not None else None
        if lora is not None:
            state = merge_lora_state(state, lora.alpha / lora.r)
        self.lock.check()
        d, digest = publish(plain_model(self.model, state, self.cfg.compute_dtype), self.processor, self.out)
        self.log(f"[train] exported {d} (final -> {d.name})")
        return str(d), digest

    # ---------------------------------------------------------------------------------- run
    def _take_lock(self) -> None:
        self.lock = DirLock(self.out, timeout=self.cfg.lock_timeout,
                            description=f"training {self.cfg.stage_name}, {self.world} ranks")
        failure = None
        if self.rank == 0:
            try:
                self.lock.acquire()
            except InputError as e:
                failure = e
        if runtime.broadcast_int(failure is not None):
            raise failure or InputError(str(self.out), "rank 0 could not take the output directory's lock")

    def run(self) -> dict:
        t_start = time.time()
        self._take_lock()
        try:
            return self._run(t_start)
        finally:
            if self.rank == 0:
                self.lock.release()

    def _run(self, t_start: float) -> dict:
        cfg = self.cfg
        for phase in (self.build_model, self.shard, self.build_optimizer, self.load_data):
            phase()
        start = self.resume()
        metrics = MetricsWriter(cfg.metrics_out if self.rank == 0 else None, append=cfg.resume and start > 0)
        t_loop, tokens, last_log = time.time(), 0, 0.0
        for step in range(start, cfg.total_steps):
            rec = self.step(step)
            metrics.write(rec)
            tokens += rec["tokens"]
            if time.time() - last_log >= cfg.log_every or step + 1 == cfg.total_steps or step == start:
                last_log = time.time()
                self.log(f"[train] step {step + 1}/{cfg.total_steps} loss {rec['loss']:.4f} tokens {rec['tokens']} "
                         f"{rec['tokens_per_s']:.0f} tok/s lr {rec['lr']:.2e}")
            if cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.total_steps:
                self.save(step + 1)
            if cfg.kill_after_step is not None and step + 1 == cfg.kill_after_step:
                self.log(f"[train] test hook: killing rank {self.rank} after step {step + 1}")
                sys.stdout.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        metrics.close()
        if cfg.total_steps > start:  # the last checkpoint, so a re-run with --resume is a no-op
            self.save(cfg.total_steps)
        loop_s = time.time() - t_loop
        exported = self.export() if cfg.export else None
        result = self._result(start, loop_s, tokens, exported)
        if self.rank == 0:
            result["wall_seconds"] = time.time() - t_start
            write_json(self.out / "result.json", result)
            self.log(f"[train] done: final loss {result['final_loss']}, data version "
                     f"{result.get('data_version', '-')[:16]}")
            if self.pipes is not None:
                _report_pipes(self.pipes, result)
        runtime.barrier()
        return result

    def _result(self, start: int, loop_s: float, tokens: int, exported) -> dict[str, Any]:
        cfg = self.cfg
        result: dict[str, Any] = {
            "stage": cfg.stage_name, "recipe": cfg.recipe.name if cfg.recipe else None, "steps": cfg.total_steps,
            "start_step": start, "world_size": self.world, "dp_size": cfg.dp_size, "ulysses_degree": cfg.ulysses,
            "ring_degree": cfg.ring, "sharding": cfg.sharding, "fingerprint": self.fingerprint,
            "run_dir": str(self.run_dir), "final_loss": self.losses[-1] if self.losses else None,
            "loop_seconds": loop_s, "tokens_per_s": tokens / loop_s if loop_s > 0 and tokens else None,
            "data": list(cfg.data), "data_versions": self.data_versions, "init_from": self.init_path,
            "init_version": self.init_version, "trainer_version": TRAINER_VERSION,
        }
        if exported is not None:
            result["final_dir"], result["data_version"] = exported
        if self.rank == 0 and cfg.metrics_out and Path(cfg.metrics_out).exists():
            recs = read_metrics(cfg.metrics_out)
            result["metrics"] = summarize(recs)
            if recs:
                png = self.out / "loss_curve.png"
                plot_loss_curve(recs, png, title=f"{result['stage']} loss")
                result["loss_curve"] = str(png)
        return result


def train(args: TrainArgs) -> dict:
    """Train one stage (or the smoke batches without a recipe); returns the result dict (rank 0 also
    writes it to <output_dir>/result.json)."""
    runtime.die_with_parent()
    device = runtime.init_distributed()
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    with contextlib.ExitStack() as stack:
        cm = runtime.open_pipes()
        pipes = stack.enter_context(cm) if cm is not None else None
        log = runtime.Log(pipes)
        cfg = resolve(args, runtime.world(), runtime.distributed(), device)
        return Trainer(cfg, device, log, pipes).run()


def _report_pipes(pipes, result: dict) -> None:
    import base64

    md = {
        "final_loss": {"raw_value": result.get("final_loss"), "type": "float"},
        "tokens_per_s": {"raw_value": result.get("tokens_per_s") or 0.0, "type": "float"},
        "steps": {"raw_value": int(result["steps"]), "type": "int"},
        "resumed_from_step": {"raw_value": int(result["start_step"]), "type": "int"},
        "world_size": {"raw_value": int(result["world_size"]), "type": "int"},
        "sp_degree": {"raw_value": int(result["ulysses_degree"] * result["ring_degree"]), "type": "int"},
        "sharding": {"raw_value": result["sharding"], "type": "text"},
        "run_fingerprint": {"raw_value": result["fingerprint"], "type": "text"},
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
