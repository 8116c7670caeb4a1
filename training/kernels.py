"""Fused attention block kernels that return the log-sum-exp (what a ring merge needs); none builds S x S.

Contract (token-major, "varlen" packing). A kernel call gets packed rows and a :class:`VarlenLayout`:

* ``q`` [Nq, Hq, D], ``k`` / ``v`` [Nk, Hkv, D] (Hq a multiple of Hkv: grouped-query attention is the
  kernel's business);
* piece ``i`` of the layout = query rows ``cu_q[i]:cu_q[i+1]`` attending key rows ``cu_k[i]:cu_k[i+1]``;
  ``causal`` = a top-left aligned causal mask inside every piece (the planner only sets it on square pieces),
  otherwise every query of a piece sees every key of that piece; every piece is non-empty on both sides;
* ``forward`` -> ``(out [Nq, Hq, D] in q's dtype, lse [Nq, Hq])``; lse is float32 (float64 for float64
  inputs) and natural-log;
* ``backward(dout, q, k, v, out, lse)`` -> ``(dq, dk, dv)`` shaped like q, k, v, computed from the FINAL
  (merged over all blocks) ``out`` / ``lse`` of the query rows, so per-block gradients add up exactly.

Kernels: ``cpu_flash`` (``aten._scaled_dot_product_flash_attention_for_cpu`` and its backward, one call per
piece), ``flash_attn`` (flash-attn's varlen forward/backward, the ``gpu`` extra), ``sdpa_flash`` (torch's
bundled flash kernel, ``aten._flash_attention_forward`` with cu_seqlens, as ``torch.nn.attention.varlen``
uses it), ``sdpa_cudnn`` (``aten._scaled_dot_product_cudnn_attention``, one call per piece; the Hopper
default), ``sdpa_efficient`` (``aten._scaled_dot_product_efficient_attention``, one call per piece; CUDA
float32). :func:`select_kernel` picks one per device and dtype (``auto``), or the one named by
:func:`set_block_kernel` / the ``LONGVILA_ATTN_KERNEL`` environment variable, logs the choice once, and
raises (naming the reason) when the requested kernel cannot run the inputs -- no silent fallback. The exact
matmul kernel lives in :mod:`training.sp.testing` as the test reference only (``register_kernel``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Iterator

import torch

log = logging.getLogger(__name__)

KERNEL_ENV = "LONGVILA_ATTN_KERNEL"
aten = torch.ops.aten  # the op namespace the kernels call (tests substitute CPU emulations of the CUDA ops)
_HALF = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class VarlenLayout:
    """Pieces of one kernel call (see module doc); ``cu_q`` / ``cu_k`` are cumulative row offsets."""

    causal: bool
    cu_q: tuple[int, ...]
    cu_k: tuple[int, ...]
    _tensors: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if len(self.cu_q) != len(self.cu_k) or len(self.cu_q) < 2:
            raise ValueError("cu_q and cu_k need the same number (>= 2) of offsets")

    def pieces(self):
        """(q_start, q_end, k_start, k_end) of every piece, in packed-row coordinates."""
        for i in range(len(self.cu_q) - 1):
            yield self.cu_q[i], self.cu_q[i + 1], self.cu_k[i], self.cu_k[i + 1]

    @property
    def max_q(self) -> int:
        return max(b - a for a, b in zip(self.cu_q, self.cu_q[1:]))

    @property
    def max_k(self) -> int:
        return max(b - a for a, b in zip(self.cu_k, self.cu_k[1:]))

    def cu_tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """int32 cu_seqlens on ``device`` (made once per device)."""
        key = str(device)
        if key not in self._tensors:
            self._tensors[key] = (torch.tensor(self.cu_q, dtype=torch.int32, device=device),
                                  torch.tensor(self.cu_k, dtype=torch.int32, device=device))
        return self._tensors[key]


class AttentionKernel:
    """Base class: ``name``, :meth:`unsupported`, :meth:`forward`, :meth:`backward` (module doc)."""

    name = ""

    def unsupported(self, device: torch.device, dtype: torch.dtype, head_dim: int) -> str | None:
        """None if the kernel can run these inputs, else the reason it cannot."""
        raise NotImplementedError

    def forward(self, q, k, v, layout: VarlenLayout, scale: float):
        raise NotImplementedError

    def backward(self, dout, q, k, v, out, lse, layout: VarlenLayout, scale: float):
        raise NotImplementedError


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _heads_first(x: torch.Tensor) -> torch.Tensor:
    """[n, H, D] packed rows -> a [1, H, n, D] view (what the dense SDPA ops take)."""
    return x.unsqueeze(0).transpose(1, 2)


class _PerPieceKernel(AttentionKernel):
    """A dense SDPA op called once per piece on [1, H, n, D] views (no copies of q/k/v)."""

    def _fwd(self, q4, k4, v4, causal: bool, scale: float):
        raise NotImplementedError

    def _bwd(self, do4, q4, k4, v4, o4, lse3, causal: bool, scale: float):
        raise NotImplementedError

    def forward(self, q, k, v, layout, scale):
        out = lse = None
        for qa, qb, ka, kb in layout.pieces():
            o4, l3 = self._fwd(*(_heads_first(t) for t in (q[qa:qb], k[ka:kb], v[ka:kb])), layout.causal, scale)
            o, l_ = o4[0].transpose(0, 1), l3[0, :, : qb - qa].transpose(0, 1)
            if len(layout.cu_q) == 2:  # one piece: its result is the answer
                return o, l_
            if out is None:
                out = torch.empty_like(q)
                lse = torch.empty(q.shape[:2], dtype=lse_dtype(q.dtype), device=q.device)
            out[qa:qb], lse[qa:qb] = o, l_
        return out, lse

    def backward(self, dout, q, k, v, out, lse, layout, scale):
        dq = dk = dv = None
        for qa, qb, ka, kb in layout.pieces():
            views = (_heads_first(t) for t in (dout[qa:qb], q[qa:qb], k[ka:kb], v[ka:kb], out[qa:qb]))
            lse3 = lse[qa:qb].transpose(0, 1).unsqueeze(0).contiguous()
            g = [t[0].transpose(0, 1) for t in self._bwd(*views, lse3, layout.causal, scale)]
            if len(layout.cu_q) == 2:
                return tuple(g)
            if dq is None:
                dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
            dq[qa:qb], dk[ka:kb], dv[ka:kb] = g
        return dq, dk, dv


def _expand_kv(k4: torch.Tensor, heads: int) -> torch.Tensor:
    return k4 if k4.shape[1] == heads else k4.repeat_interleave(heads // k4.shape[1], dim=1)


def _reduce_kv(dk4: torch.Tensor, heads_kv: int) -> torch.Tensor:
    b, h, n, d = dk4.shape
    return dk4 if h == heads_kv else dk4.view(b, heads_kv, h // heads_kv, n, d).sum(2)


@functools.cache
def _cpu_flash_native_gqa() -> bool:
    """Whether this torch's CPU flash op takes fewer K/V heads than query heads (probed once, tiny)."""
    q, kv = torch.zeros(1, 2, 2, 8), torch.zeros(1, 1, 2, 8)
    try:
        aten._scaled_dot_product_flash_attention_for_cpu(q, kv, kv, 0.0, False)
    except RuntimeError:
        return False
    return True


class CpuFlashKernel(_PerPieceKernel):
    """torch's CPU flash-attention op (float64/32/16, bfloat16), which returns the LSE."""

    name = "cpu_flash"

    def unsupported(self, device, dtype, head_dim):
        if device.type != "cpu":
            return f"runs on CPU only, not {device.type}"
        if dtype not in (torch.float64, torch.float32) + _HALF:
            return f"no CPU flash kernel for {dtype}"
        return None

    def _fwd(self, q4, k4, v4, causal, scale):
        if not _cpu_flash_native_gqa():
            k4, v4 = _expand_kv(k4, q4.shape[1]), _expand_kv(v4, q4.shape[1])
        return aten._scaled_dot_product_flash_attention_for_cpu(q4, k4, v4, 0.0, causal, scale=scale)

    def _bwd(self, do4, q4, k4, v4, o4, lse3, causal, scale):
        hkv = k4.shape[1]
        if not _cpu_flash_native_gqa():
            k4, v4 = _expand_kv(k4, q4.shape[1]), _expand_kv(v4, q4.shape[1])
        dq, dk, dv = aten._scaled_dot_product_flash_attention_for_cpu_backward(
            do4, q4, k4, v4, o4, lse3, 0.0, causal, scale=scale)
        return dq, _reduce_kv(dk, hkv), _reduce_kv(dv, hkv)


def _cuda_half_reason(device, dtype, head_dim) -> str | None:
    if device.type != "cuda":
        return f"runs on CUDA only, not {device.type}"
    if dtype not in _HALF:
        return f"needs float16/bfloat16, not {dtype}"
    if head_dim > 256 or head_dim % 8:
        return f"needs a head dim <= 256 and a multiple of 8, not {head_dim}"
    if torch.cuda.get_device_capability(device)[0] < 8:
        return "needs an sm80+ GPU"
    return None


class SdpaFlashVarlenKernel(AttentionKernel):
    """torch's bundled flash-attention 2 kernel with cu_seqlens (``aten._flash_attention_forward`` /
    ``_flash_attention_backward``, the ops behind ``torch.nn.attention.varlen``); GQA native."""

    name = "sdpa_flash"

    def unsupported(self, device, dtype, head_dim):
        reason = _cuda_half_reason(device, dtype, head_dim)
        if reason is None and not torch.backends.cuda.is_flash_attention_available():
            reason = "this torch build has no flash attention"
        return reason

    def forward(self, q, k, v, layout, scale):
        cu_q, cu_k = layout.cu_tensors(q.device)
        out, lse, _, _, _ = aten._flash_attention_forward(
            q, k, v, cu_q, cu_k, layout.max_q, layout.max_k, 0.0, layout.causal, False, scale=scale)
        return out, lse.t()  # lse is [Hq, Nq]

    def backward(self, dout, q, k, v, out, lse, layout, scale):
        cu_q, cu_k = layout.cu_tensors(q.device)
        rng_state = torch.zeros(2, dtype=torch.uint64, device=q.device)  # no dropout: never read
        unused = torch.empty(0, device=q.device)
        dq, dk, dv = aten._flash_attention_backward(
            dout.contiguous(), q, k, v, out.contiguous(), lse.t().contiguous(), cu_q, cu_k, layout.max_q,
            layout.max_k, 0.0, layout.causal, rng_state, unused, scale=scale)
        return dq, dk, dv


class SdpaCudnnKernel(_PerPieceKernel):
    """cuDNN's fused attention (``aten._scaled_dot_product_cudnn_attention`` and its backward), one call per
    piece, GQA native: the fastest kernel on Hopper (measured on an H100 with torch 2.11 at 32k tokens, 28/4 heads
    x 128, causal fwd+bwd: 46 ms against 81 ms for the bundled flash kernel; 8 packed documents 7.6 ms against
    11.6 ms for flash varlen). Short pieces are launch-bound (on the H100, pieces of 1-2k tokens took 1.3-1.8x
    the flash varlen kernel's time), so a call with more than ``max_pieces`` pieces or pieces shorter than
    ``min_mean_piece`` tokens on average goes to the bundled flash kernel's varlen path instead (forward and
    backward decide alike from the same layout)."""

    name = "sdpa_cudnn"
    max_pieces = 16
    min_mean_piece = 4096

    def unsupported(self, device, dtype, head_dim):
        reason = _cuda_half_reason(device, dtype, head_dim)
        if reason is None and head_dim > 128:
            reason = f"needs a head dim <= 128, not {head_dim}"
        if reason is None and not (torch.backends.cudnn.is_available()
                                   and hasattr(aten, "_scaled_dot_product_cudnn_attention")):
            reason = "this torch build has no cuDNN attention"
        if reason is None and not torch.backends.cuda.is_flash_attention_available():
            reason = "needs the bundled flash kernel too (rows of many documents)"
        return reason

    def _delegates(self, layout: VarlenLayout) -> bool:
        pieces = len(layout.cu_q) - 1
        return pieces > self.max_pieces or layout.cu_q[-1] - layout.cu_q[0] < pieces * self.min_mean_piece

    def forward(self, q, k, v, layout, scale):
        if self._delegates(layout):
            return _KERNELS["sdpa_flash"].forward(q, k, v, layout, scale)
        return super().forward(q, k, v, layout, scale)

    def backward(self, dout, q, k, v, out, lse, layout, scale):
        if self._delegates(layout):
            return _KERNELS["sdpa_flash"].backward(dout, q, k, v, out, lse, layout, scale)
        return super().backward(dout.contiguous(), q, k, v, out.contiguous(), lse, layout, scale)

    def _fwd(self, q4, k4, v4, causal, scale):
        out, lse = aten._scaled_dot_product_cudnn_attention(q4, k4, v4, None, True, 0.0, causal, False,
                                                            scale=scale)[:2]
        return out, lse[..., 0]  # lse is [1, H, n, 1]

    def _bwd(self, do4, q4, k4, v4, o4, lse3, causal, scale):
        n, zero = q4.shape[2], torch.zeros((), dtype=torch.int64, device=q4.device)  # philox: no dropout
        return aten._scaled_dot_product_cudnn_attention_backward(
            do4, q4, k4, v4, o4, lse3.unsqueeze(-1), zero, zero, None, None, None, n, k4.shape[2], 0.0, causal,
            scale=scale)


@functools.cache
def _flash_attn_ops():
    """flash-attn's varlen ops (>= 2.7 signatures), or the reason they cannot be used."""
    try:
        from flash_attn import flash_attn_interface as fa
    except ImportError as err:  # the `gpu` extra is not installed
        return None, f"flash-attn is not importable ({err})"
    import inspect

    if "window_size_left" not in inspect.signature(fa._flash_attn_varlen_forward).parameters:
        return None, "flash-attn is older than 2.7 (window_size_left/right signature)"
    return (fa._flash_attn_varlen_forward, fa._flash_attn_varlen_backward), None


class FlashAttnVarlenKernel(AttentionKernel):
    """flash-attn's ``_flash_attn_varlen_forward`` / ``_flash_attn_varlen_backward`` (GQA native)."""

    name = "flash_attn"

    def unsupported(self, device, dtype, head_dim):
        return _cuda_half_reason(device, dtype, head_dim) or _flash_attn_ops()[1]

    def forward(self, q, k, v, layout, scale):
        fwd = _flash_attn_ops()[0][0]
        cu_q, cu_k = layout.cu_tensors(q.device)
        out, lse, _, _ = fwd(q, k, v, cu_q, cu_k, layout.max_q, layout.max_k, 0.0, scale, layout.causal,
                             window_size_left=-1, window_size_right=-1, softcap=0.0, alibi_slopes=None,
                             return_softmax=False)
        return out, lse.t()  # lse is [Hq, Nq]

    def backward(self, dout, q, k, v, out, lse, layout, scale):
        bwd = _flash_attn_ops()[0][1]
        cu_q, cu_k = layout.cu_tensors(q.device)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        bwd(dout.contiguous(), q, k, v, out.contiguous(), lse.t().contiguous(), dq, dk, dv, cu_q, cu_k,
            layout.max_q, layout.max_k, 0.0, scale, layout.causal, -1, -1, 0.0, None, False, None)
        return dq, dk, dv


class SdpaEfficientKernel(_PerPieceKernel):
    """torch's memory-efficient attention (``aten._scaled_dot_product_efficient_attention``), one call per
    piece: the CUDA kernel for float32 (and for half precision on GPUs without flash attention)."""

    name = "sdpa_efficient"

    def unsupported(self, device, dtype, head_dim):
        if device.type != "cuda":
            return f"runs on CUDA only, not {device.type}"
        if dtype not in (torch.float32,) + _HALF:
            return f"needs float32/float16/bfloat16, not {dtype}"
        return None

    def _fwd(self, q4, k4, v4, causal, scale):
        heads = q4.shape[1]
        out, lse, _, _ = aten._scaled_dot_product_efficient_attention(
            q4, _expand_kv(k4, heads), _expand_kv(v4, heads), None, True, 0.0, causal, scale=scale)
        return out, lse  # lse is [1, H, n rounded up to 32]

    def _bwd(self, do4, q4, k4, v4, o4, lse3, causal, scale):
        heads, hkv, n = q4.shape[1], k4.shape[1], q4.shape[2]
        padded = torch.nn.functional.pad(lse3, (0, -n % 32))
        zero = torch.zeros((), dtype=torch.int64)  # philox seed/offset: host scalars, as the forward returns them
        dq, dk, dv, _ = aten._scaled_dot_product_efficient_attention_backward(
            do4, q4, _expand_kv(k4, heads), _expand_kv(v4, heads), None, o4, padded, zero, zero, 0.0,
            [True, True, True, False], causal, scale=scale)
        return dq, _reduce_kv(dk, hkv), _reduce_kv(dv, hkv)


_KERNELS: dict[str, AttentionKernel] = {}
_AUTO_ORDER = {"cpu": ("cpu_flash",), "cuda": ("flash_attn", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient"),
               "hopper": ("sdpa_cudnn", "flash_attn", "sdpa_flash", "sdpa_efficient")}
_OVERRIDE: str | None = None
_LOGGED: set = set()


def register_kernel(kernel: AttentionKernel) -> None:
    """Make ``kernel`` selectable by name (the built-in ones are registered on import)."""
    _KERNELS[kernel.name] = kernel


for _k in (CpuFlashKernel(), FlashAttnVarlenKernel(), SdpaFlashVarlenKernel(), SdpaCudnnKernel(),
           SdpaEfficientKernel()):
    register_kernel(_k)


def kernel_names() -> list[str]:
    return sorted(_KERNELS)


def _check_name(name: str) -> str:
    if name != "auto" and name not in _KERNELS:
        raise ValueError(f"unknown attention kernel {name!r}; expected 'auto' or one of {kernel_names()}")
    return name


def set_block_kernel(name: str | None) -> None:
    """Force a kernel by name for this process (``None`` / ``"auto"``: automatic choice or the env var)."""
    global _OVERRIDE
    _OVERRIDE = None if name in (None, "auto") else _check_name(name)


@contextlib.contextmanager
def block_kernel(name: str | None) -> Iterator[None]:
    """:func:`set_block_kernel` for the duration of a ``with`` block (the previous override comes back)."""
    global _OVERRIDE
    previous = _OVERRIDE
    set_block_kernel(name)
    try:
        yield
    finally:
        _OVERRIDE = previous


def get_block_kernel() -> str:
    """The requested kernel: the :func:`set_block_kernel` override, else ``$LONGVILA_ATTN_KERNEL``, else auto."""
    return _OVERRIDE or _check_name(os.environ.get(KERNEL_ENV, "auto").strip() or "auto")


def select_kernel(device: torch.device, dtype: torch.dtype, head_dim: int) -> AttentionKernel:
    """The kernel for these inputs (module doc). Raises ValueError naming why nothing fits."""
    requested = get_block_kernel()
    names = _auto_order(device) if requested == "auto" else (requested,)
    reasons = []
    for name in names:
        reason = _KERNELS[name].unsupported(device, dtype, head_dim)
        if reason is None:
            _log_choice(name, requested, device, dtype)
            return _KERNELS[name]
        reasons.append(f"{name}: {reason}")
    why = "; ".join(reasons) or f"no fused attention kernel for device type {device.type!r}"
    raise ValueError(f"no attention kernel for {device.type} {dtype} (head dim {head_dim}), "
                     f"requested {requested!r}: {why}")


def _auto_order(device: torch.device) -> tuple[str, ...]:
    """Kernels tried in turn: cuDNN first on Hopper and newer (measured fastest there), flash-attention first
    before that."""
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9:
        return _AUTO_ORDER["hopper"]
    return _AUTO_ORDER.get(device.type, ())


def _log_choice(name: str, requested: str, device: torch.device, dtype: torch.dtype) -> None:
    key = (name, device.type, dtype)
    if key not in _LOGGED:
        _LOGGED.add(key)
        log.info("attention kernel %s for %s %s (requested %s; override with %s or set_block_kernel)",
                 name, device.type, dtype, requested, KERNEL_ENV)


__all__ = ["AttentionKernel", "KERNEL_ENV", "VarlenLayout", "block_kernel", "get_block_kernel", "kernel_names",
           "lse_dtype", "register_kernel", "select_kernel", "set_block_kernel"]
