import json

import pytest
import torch

from training import checkpoint as ckpt


def _tiny():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    m(torch.randn(3, 4)).sum().backward()
    opt.step()
    return m, opt


def test_roundtrip_and_manifest(tmp_path):
    m, opt = _tiny()
    d = ckpt.save_checkpoint(ckpt.step_dir(tmp_path, 3), m, opt, None, {"step": 3, "losses": [1.0]})
    man = json.loads((d / "manifest.json").read_text())
    assert set(man["files"]) == {"model.safetensors", "optimizer.pt", "rng.pt", "trainer_state.json"}
    m2 = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    loaded = ckpt.load_checkpoint_state(d, m2)
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)
    assert loaded.trainer_state["step"] == 3 and loaded.optimizer["state"]
    assert ckpt.latest_checkpoint(tmp_path) == d
    # no temporary directories left behind
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-000003"]


def test_corrupted_file_detected_by_checksum(tmp_path):
    m, opt = _tiny()
    d1 = ckpt.save_checkpoint(ckpt.step_dir(tmp_path, 2), m, opt, None, {"step": 2})
    d2 = ckpt.save_checkpoint(ckpt.step_dir(tmp_path, 4), m, opt, None, {"step": 4})
    f = d2 / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF  # flip bits inside the tensor payload: still a loadable safetensors file
    f.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="checksum mismatch"):
        ckpt.load_checkpoint_state(d2, torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)))
    logs = []
    assert ckpt.latest_checkpoint(tmp_path, log=logs.append) == d1  # falls back to the older valid one
    assert "skipping" in logs[0]
    (d1 / "optimizer.pt").unlink()
    with pytest.raises(ckpt.CheckpointError, match="missing"):
        ckpt.verify_checkpoint(d1)
    assert ckpt.latest_checkpoint(tmp_path, log=logs.append) is None
