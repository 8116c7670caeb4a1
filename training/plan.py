"""Memory plan of a training stage: estimated per-GPU memory of the trainer's configuration and whether it fits.

    python -m training.plan --recipe longvila-7b --stage 5 --world 32 --ulysses 8 --ring 4 --gpu-gib 80
    python -m training.plan --profile longvila-1.5b-qwen2 --tokens 131072 --world 1 --cpu-offload
    python -m training.plan --validate        # the estimator against the measured H100 figures

The estimate is built from the model's real shapes (the profile built on the meta device: exact
parameter counts per module and per decoder layer) and the trainer's configuration (training.fsdp):

* params: FSDP (the trainer under torchrun): float32 master weights / world (0 on the GPU with CPU
  offload); replicated: the compute dtype, full.
* grads: trainable parameters only; FSDP float32 / world (offloadable); replicated compute dtype, full.
* optimizer: AdamW's 2 moments per trainable parameter; FSDP float32 / world (offloadable).
* gathered (FSDP): the root unit (vision, projector, embeddings, head) and 2 decoder layers in flight in
  the compute dtype, with their unsharded gradients (+ a float32 copy of one layer's for the reduce-scatter).
* activations: tensors saved for backward per decoder layer and token, counted from the layer's
  operations (two RMSNorms with their float32 inputs; q, k, v, output and log-sum-exp of a fused attention
  kernel; o_proj input; gate, up, SiLU and product of the MLP); with checkpointing each layer's input plus
  one layer recomputed; plus one layer's backward working set; the vision tower's the same way for the
  rank's frames.
* attention: fused kernels (flash / efficient / cuDNN; O(tokens)), part of the activations; a kernel that
  materialises the score matrix is not modelled.
* logits: the trainer's loss (training/loss.py, fused chunked cross-entropy over the LM head): one chunk
  of float32 logits (256 MiB) turned into its gradient, its compute-dtype copy, a float32 accumulator of
  the LM head's weight gradient, the hidden-state gradient of every row. Full logits (`--loss-chunk 0`,
  the loss before it): [tokens, vocab] in the compute dtype + a float32 copy + log-softmax + its gradient,
  (b + 16) bytes per vocab entry and token.

Per rank, a micro-batch of rows of `tokens` is split over the SP group (tokens / (ulysses x ring)), and
its frames likewise. It fits when the total stays under the GPU's memory less a 5% reserve (allocator
fragmentation, CUDA context, NCCL buffers are not estimated).

`--validate` compares the estimate with every figure of ../shared/reference/gpu.md that states its
configuration; the errors are printed and asserted (bounds) in tests/training/test_plan.py, which also
checks the activation and state terms against exact CPU measurements of the smoke model.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, replace
from functools import lru_cache

GIB = 2 ** 30
RESERVE = 0.05


@dataclass(frozen=True)
class Shapes:
    """What the estimate needs of a model: parameter counts and layer dimensions."""

    params: int             # all parameters
    per_layer: int          # one LLM decoder layer
    layers: int
    hidden: int
    kv_heads: int
    head_dim: int
    intermediate: int
    heads: int
    vocab: int
    vision_hidden: int
    vision_intermediate: int
    vision_layers: int
    vision_heads: int
    patches: int            # patch tokens per frame
    named: tuple[tuple[str, int], ...]  # (parameter name, numel) of every parameter

    @property
    def root(self) -> int:
        return self.params - self.layers * self.per_layer

    def kv_hidden(self, ulysses: int = 1) -> int:
        """K/V width per token as attention sees it: K/V heads are replicated when Ulysses needs it."""
        from .sp.ulysses import kv_replication_factor

        return kv_replication_factor(self.heads, self.kv_heads, ulysses) * self.kv_heads * self.head_dim


@lru_cache(maxsize=8)
def model_shapes(profile: str) -> Shapes:
    """Shapes of a profile's model, built on the meta device (no weights)."""
    from .model.profiles import build_model

    m = build_model(profile, device="meta")
    tc, vc = m.config.text_config, m.config.vision_config
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    named = tuple((n, p.numel()) for n, p in m.named_parameters())
    layer0 = sum(k for n, k in named if n.startswith("llm.model.layers.0."))
    return Shapes(params=sum(k for _, k in named), per_layer=layer0, layers=tc.num_hidden_layers,
                  hidden=tc.hidden_size, kv_heads=tc.num_key_value_heads, head_dim=head_dim,
                  intermediate=tc.intermediate_size, heads=tc.num_attention_heads, vocab=tc.vocab_size,
                  vision_hidden=vc.hidden_size, vision_intermediate=vc.intermediate_size,
                  vision_layers=vc.num_hidden_layers, vision_heads=vc.num_attention_heads,
                  patches=(vc.image_size // vc.patch_size) ** 2, named=named)


@dataclass(frozen=True)
class Plan:
    """One configuration to estimate (see module doc)."""

    shapes: Shapes
    tokens: int                      # tokens of one packed row
    world: int = 1
    ulysses: int = 1
    ring: int = 1
    micro_batch: int = 1
    frames: int = 0                  # frames per row
    trainable: int | None = None     # trainable parameters (None: all)
    trainable_in_layers: int | None = None
    sharding: str = "fsdp"           # fsdp | replicate
    compute_bytes: int = 2
    optimizer_moments: int = 2       # AdamW 2, SGD 0 (no momentum), 0 for a forward + backward alone
    checkpointing: bool = True
    cpu_offload: bool = False
    loss_chunk: int | None = None    # rows per loss chunk; None: training.loss's own (256 MiB of logits); 0: full
    gpu_gib: float = 80.0
    host_gib: float | None = None    # host memory per node; None: not checked
    procs_per_node: int = 8

    @property
    def sp(self) -> int:
        return self.ulysses * self.ring

    @property
    def local_tokens(self) -> int:
        return math.ceil(self.micro_batch * self.tokens / self.sp)

    @property
    def local_frames(self) -> int:
        return math.ceil(self.micro_batch * self.frames / self.sp)


def attention_saved_bytes(s: Shapes, b: int, ulysses: int = 1) -> float:
    """Bytes a fused attention kernel (and o_proj) keeps per token and layer: q, k, v (K/V replicated as
    Ulysses needs), output, o_proj input, float32 log-sum-exp per head. O(tokens): no score matrix."""
    return b * (s.hidden + 2 * s.kv_hidden(ulysses)) + 2 * b * s.hidden + 4 * s.heads


def layer_saved_bytes(s: Shapes, b: int, ulysses: int = 1) -> float:
    """Bytes one LLM decoder layer saves for backward per token (module doc)."""
    norms = 2 * (4 + 2 * b) * s.hidden                  # 2 RMSNorms: float32 input, normalised, output
    mlp = 4 * b * s.intermediate                         # gate, up, SiLU(gate), product
    return norms + attention_saved_bytes(s, b, ulysses) + mlp


def vision_layer_saved_bytes(s: Shapes, b: int) -> float:
    """The same for a SigLIP encoder layer, per patch token (LayerNorms, attention, GELU MLP)."""
    return b * (9 * s.vision_hidden + 2 * s.vision_intermediate) + 4 * s.vision_heads


def head_saved_bytes(s: Shapes, b: int) -> float:
    """Per token, outside the decoder layers: the final RMSNorm (float32 input, normalised) and the LM head's input."""
    return (4 + 2 * b) * s.hidden


def _activations(p: Plan) -> float:
    s, b, t = p.shapes, p.compute_bytes, p.local_tokens
    per_layer = layer_saved_bytes(s, b, p.ulysses) * t
    workspace = b * t * (2 * s.hidden + 2 * s.intermediate)  # one layer's activation gradients in backward
    llm = (s.layers * b * t * s.hidden + per_layer) if p.checkpointing else s.layers * per_layer
    vt = p.local_frames * s.patches
    v_layer = vision_layer_saved_bytes(s, b) * vt
    vision = (s.vision_layers * b * vt * s.vision_hidden + v_layer) if p.checkpointing else s.vision_layers * v_layer
    return llm + workspace + vision + head_saved_bytes(s, b) * t


def chunk_rows(p: Plan) -> int:
    from .loss import default_chunk_rows

    return p.loss_chunk if p.loss_chunk is not None else default_chunk_rows(p.shapes.vocab)


def _logits(p: Plan) -> float:
    s, b, t = p.shapes, p.compute_bytes, p.local_tokens
    if p.loss_chunk == 0:  # full logits, float32 copy, log-softmax and their gradients
        return (b + 16) * s.vocab * t
    # training.loss: one chunk of float32 logits turned into its gradient in place (+ its compute-dtype
    # copy), the float32 LM-head weight-gradient accumulator, and the hidden-state gradient of every row
    return (4 + b) * s.vocab * min(chunk_rows(p), t) + 4 * s.vocab * s.hidden + b * t * s.hidden


def estimate(p: Plan) -> dict[str, float]:
    """Per-GPU bytes of each component, and 'total'."""
    s, b = p.shapes, p.compute_bytes
    n, n_tr = s.params, s.params if p.trainable is None else p.trainable
    n_tr_layer = (s.per_layer if p.trainable is None else (p.trainable_in_layers or 0) / s.layers)
    if p.sharding == "fsdp":
        on_gpu = 0.0 if p.cpu_offload else 1.0
        states = {"params": on_gpu * 4 * n / p.world, "grads": on_gpu * 4 * n_tr / p.world,
                  "optimizer": on_gpu * 4 * p.optimizer_moments * n_tr / p.world}
        root_tr = n_tr - (p.trainable_in_layers if p.trainable is not None else s.layers * s.per_layer)
        gathered = b * (s.root + 2 * s.per_layer) + b * max(root_tr, 0) + (b + 4) * n_tr_layer
    else:
        states = {"params": b * n, "grads": b * n_tr, "optimizer": b * p.optimizer_moments * n_tr}
        gathered = 0.0
    out = {**states, "gathered": gathered, "activations": _activations(p), "logits": _logits(p)}
    out["total"] = sum(out.values())
    return out


def check(p: Plan) -> str | None:
    """Why the layout cannot run (None when it can)."""
    if p.world % p.sp:
        return f"world {p.world} is not a multiple of the SP degree ulysses x ring = {p.sp}"
    if p.shapes.heads % p.ulysses:
        return (f"Ulysses degree {p.ulysses} must divide the {p.shapes.heads} attention heads "
                "(choose a smaller --ulysses and a larger --ring)")
    return None


def fits(p: Plan, est: dict[str, float]) -> bool:
    return est["total"] <= (1 - RESERVE) * p.gpu_gib * GIB


def host_bytes(p: Plan) -> dict[str, float]:
    """Host memory: offloaded sharded states per rank, and rank 0's full-state checkpoint gather."""
    s = p.shapes
    n_tr = s.params if p.trainable is None else p.trainable
    off = (4 * s.params + 4 * n_tr + 4 * p.optimizer_moments * n_tr) / p.world if p.cpu_offload else 0.0
    ckpt = 4 * s.params + 4 * p.optimizer_moments * n_tr
    return {"offloaded_per_rank": off, "checkpoint_rank0": ckpt,
            "node0": off * min(p.procs_per_node, p.world) + ckpt}


def host_fits(p: Plan) -> bool | None:
    """Whether node 0's host memory holds its ranks' offloaded states plus rank 0's checkpoint gather (measured on
    an H100 host of 125 GiB, the 7B profile with offload at world 1, 120 GiB of offloaded states, was killed during its
    first step); None when ``host_gib`` is not given."""
    return None if p.host_gib is None else host_bytes(p)["node0"] <= (1 - RESERVE) * p.host_gib * GIB


# ------------------------------------------------------------------------------------------ recipe stages


def trainable_counts(s: Shapes, stage) -> tuple[int, int]:
    """(trainable parameters, of which inside decoder layers) of a recipe stage (modules or LoRA)."""
    if stage.lora is None:
        chosen = [(n, k) for n, k in s.named if n.split(".", 1)[0] in stage.trainable]
    else:
        extra = stage.lora.trainable_extra
        chosen = [(n, k) for n, k in s.named if n.startswith("llm.") and any(t in n for t in extra)]
        r, h, kv = stage.lora.r, s.hidden, s.kv_hidden()
        dims = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h)}
        adapters = sum(r * (a + c) for m, (a, c) in dims.items() if m in stage.lora.target_modules) * s.layers
        chosen.append(("llm.model.layers.*.lora", adapters))
    in_layers = sum(k for n, k in chosen if n.startswith("llm.model.layers."))
    return sum(k for _, k in chosen), in_layers


def stage_plan(recipe_name: str, stage_id: str, **over) -> Plan:
    """The plan of a recipe stage at its longest phase; `over` overrides any Plan field."""
    from .config import LONG_CONTEXT_TOKENS
    from .recipes import load_recipe

    recipe = load_recipe(recipe_name)
    st = recipe.stage(stage_id)
    shapes = model_shapes(over.pop("profile", None) or recipe.model_profile)
    tokens = max([st.max_length, *(ph.max_length for ph in st.phases)])
    trainable, in_layers = trainable_counts(shapes, st)
    ckpt = st.gradient_checkpointing if st.gradient_checkpointing is not None else tokens >= LONG_CONTEXT_TOKENS
    base = Plan(shapes=shapes, tokens=tokens, ulysses=st.ulysses_degree, ring=st.ring_degree,
                world=st.sp_degree, micro_batch=st.micro_batch_size, frames=st.num_frames, trainable=trainable,
                trainable_in_layers=in_layers, checkpointing=ckpt, cpu_offload=st.cpu_offload,
                optimizer_moments=2 if st.optimizer.name == "adamw" else 0)
    return replace(base, **{k: v for k, v in over.items() if v is not None})


# ------------------------------------------------------------------------------------------ validation

# Figures of ../shared/reference/gpu.md (one H100 80GB, bf16, batch 1, SP 1): (label, plan fields, measured GiB
# or None for "out of memory"). The project rows ran the replicated trainer's model (whole VLM profile, bf16
# parameters and gradients, full float32 logits, fused SDPA attention) for one forward + backward; the anchor
# rows a stock Qwen2-1.5B LLM (no vision tower) with checkpointing and a chunked loss, also fwd + bwd (its
# chunking is not stated: modelled as training/loss.py's with 2,048-row chunks).
MEASURED = (
    ("project, no checkpointing, 8k", dict(tokens=8192, checkpointing=False), 46.8),
    ("project, no checkpointing, 32k", dict(tokens=32768, checkpointing=False), None),
    ("project, checkpointing, 16k", dict(tokens=16384), 47.0),
    ("project, checkpointing, 32k", dict(tokens=32768), None),
    ("project, checkpointing, 64k", dict(tokens=65536), None),
    ("anchor, 16k", dict(tokens=16384, anchor=True), 18.8),
    ("anchor, 32k", dict(tokens=32768, anchor=True), 20.4),
    ("anchor, 64k", dict(tokens=65536, anchor=True), 23.5),
    ("anchor, 128k", dict(tokens=131072, anchor=True), 31.7),
)


def measured_plan(tokens: int, checkpointing: bool = True, anchor: bool = False) -> Plan:
    s = model_shapes("longvila-1.5b-qwen2")
    if anchor:  # the LLM alone: drop the vision tower and projector from the counts
        llm = sum(k for n, k in s.named if n.startswith("llm."))
        s = replace(s, params=llm, vision_layers=0, named=tuple((n, k) for n, k in s.named if n.startswith("llm.")))
    return Plan(shapes=s, tokens=tokens, sharding="replicate", optimizer_moments=0, checkpointing=checkpointing,
                loss_chunk=2048 if anchor else 0, gpu_gib=80.0)


def validate() -> list[dict]:
    rows = []
    for label, kw, measured in MEASURED:
        p = measured_plan(**kw)
        est = estimate(p)["total"] / GIB
        ok = fits(p, estimate(p))
        rows.append({"case": label, "estimated_gib": est, "measured_gib": measured, "fits": ok,
                     "error": None if measured is None else (est - measured) / measured,
                     "agrees": (measured is None) != ok})
    return rows


# ------------------------------------------------------------------------------------------ CLI


def alternatives(p: Plan) -> dict[str, float]:
    """The figures of the other choices: activations with checkpointing flipped, full logits vs chunked,
    and the attention part of the activations."""
    flipped = estimate(replace(p, checkpointing=not p.checkpointing))["activations"]
    logits = estimate(replace(p, loss_chunk=None if p.loss_chunk == 0 else 0))["logits"]
    layers_saved = p.shapes.layers if not p.checkpointing else 1
    return {"activations_flipped": flipped, "logits_flipped": logits,
            "attention": attention_saved_bytes(p.shapes, p.compute_bytes, p.ulysses) * p.local_tokens * layers_saved}


def render(p: Plan, est: dict[str, float]) -> str:
    host, alt = host_bytes(p), alternatives(p)
    ck = "with checkpointing" if p.checkpointing else "without checkpointing"
    ck_other = "without" if p.checkpointing else "with"
    chunk = f"chunked loss, {chunk_rows(p)}-row chunks" if p.loss_chunk != 0 else "full logits"
    chunk_other = "full logits" if p.loss_chunk != 0 else "the chunked loss of training/loss.py"
    notes = {
        "params": "float32 master weights / world" if p.sharding == "fsdp" else "compute dtype, full replica",
        "grads": "trainable, float32 / world" if p.sharding == "fsdp" else "trainable, full",
        "optimizer": f"{p.optimizer_moments} moments per trainable parameter",
        "gathered": "FSDP root unit + 2 decoder layers, compute dtype, with unsharded grads",
        "activations": f"{ck} ({ck_other}: {alt['activations_flipped'] / GIB:.2f} GiB); of which attention "
                       f"(fused kernel, O(tokens)): {alt['attention'] / GIB:.2f} GiB",
        "logits": f"{chunk} ({chunk_other}: {alt['logits_flipped'] / GIB:.2f} GiB)",
    }
    if p.cpu_offload:
        for k in ("params", "grads", "optimizer"):
            notes[k] += " (offloaded to host)"
    lines = [f"per-GPU memory plan: {p.tokens} tokens x {p.micro_batch} rows, {p.frames} frames per row, "
             f"world {p.world}, SP {p.ulysses}x{p.ring} ({p.local_tokens} tokens, {p.local_frames} frames per rank), "
             f"{p.sharding}, "
             f"compute {p.compute_bytes * 8}-bit, checkpointing {'on' if p.checkpointing else 'off'}, "
             f"cpu offload {'on' if p.cpu_offload else 'off'}, loss "
             f"{f'chunked ({chunk_rows(p)} rows)' if p.loss_chunk != 0 else 'full logits'}",
             f"model: {p.shapes.params / 1e9:.2f}B parameters "
             f"({(p.trainable if p.trainable is not None else p.shapes.params) / 1e9:.3f}B trainable)",
             "", "| component | GiB | |", "|---|---|---|"]
    lines += [f"| {k} | {v / GIB:.2f} | {notes[k]} |" for k, v in est.items() if k != "total"]
    cap = (1 - RESERVE) * p.gpu_gib
    lines += [f"| **total** | **{est['total'] / GIB:.2f}** | |", "",
              f"{'FITS' if fits(p, est) else 'DOES NOT FIT'}: {est['total'] / GIB:.1f} GiB of {cap:.1f} GiB usable "
              f"({p.gpu_gib:g} GiB GPU less {RESERVE:.0%} reserve)",
              f"host: {host['offloaded_per_rank'] / GIB:.1f} GiB offloaded states per rank; rank 0 gathers "
              f"{host['checkpoint_rank0'] / GIB:.1f} GiB for each checkpoint; node 0 needs "
              f"{host['node0'] / GIB:.1f} GiB"]
    if p.host_gib is not None:
        lines.append(f"{'HOST FITS' if host_fits(p) else 'HOST DOES NOT FIT'}: {host['node0'] / GIB:.1f} GiB of "
                     f"{(1 - RESERVE) * p.host_gib:.1f} GiB usable host memory per node")
    return "\n".join(lines)


def render_validation(rows: list[dict]) -> str:
    lines = ["| case (gpu.md, 1.5B, one H100) | estimated GiB | measured GiB | error | fit verdict agrees |",
             "|---|---|---|---|---|"]
    for r in rows:
        meas = "OOM" if r["measured_gib"] is None else f"{r['measured_gib']:.1f}"
        err = "-" if r["error"] is None else f"{r['error']:+.0%}"
        lines.append(f"| {r['case']} | {r['estimated_gib']:.1f} | {meas} | {err} | {'yes' if r['agrees'] else 'NO'} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=None, help="recipe name or path (with --stage)")
    p.add_argument("--stage", default=None, help="stage name or number")
    p.add_argument("--profile", default=None, help="model profile (default: the recipe's)")
    p.add_argument("--tokens", type=int, default=None, help="tokens per row (default: the stage's longest)")
    p.add_argument("--frames", type=int, default=None, help="frames per row (default: the stage's)")
    p.add_argument("--world", type=int, default=None, help="ranks (GPUs); default: the SP degree")
    p.add_argument("--ulysses", type=int, default=None)
    p.add_argument("--ring", type=int, default=None)
    p.add_argument("--micro-batch", type=int, default=None)
    p.add_argument("--sharding", choices=["fsdp", "replicate"], default=None)
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--cpu-offload", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--loss-chunk", type=int, default=None,
                   help="rows per loss chunk (default: training/loss.py's 256 MiB of logits); 0: full logits")
    p.add_argument("--gpu-gib", type=float, default=80.0)
    p.add_argument("--host-gib", type=float, default=None, help="host memory per node (checked when given)")
    p.add_argument("--procs-per-node", type=int, default=8)
    p.add_argument("--validate", action="store_true", help="compare with the measured figures of gpu.md")
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    if a.validate:
        print(render_validation(validate()))
        return 0
    over = dict(profile=a.profile, tokens=a.tokens, frames=a.frames, world=a.world, ulysses=a.ulysses,
                ring=a.ring, micro_batch=a.micro_batch, sharding=a.sharding, checkpointing=a.checkpointing,
                cpu_offload=a.cpu_offload, gpu_gib=a.gpu_gib, loss_chunk=a.loss_chunk, host_gib=a.host_gib,
                procs_per_node=a.procs_per_node)
    if a.recipe:
        p = stage_plan(a.recipe, a.stage or "5", **over)
    else:
        if not (a.profile and a.tokens):
            print("error: give --recipe/--stage, or --profile and --tokens", file=sys.stderr)
            return 2
        p = replace(Plan(shapes=model_shapes(a.profile), tokens=a.tokens),
                    **{k: v for k, v in over.items() if v is not None and k not in ("profile", "tokens")})
    problem = check(p)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    est = estimate(p)
    print(render(p, est))
    return 0 if fits(p, est) and host_fits(p) is not False else 1


if __name__ == "__main__":
    sys.exit(main())
