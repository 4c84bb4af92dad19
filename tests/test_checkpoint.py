"""Checkpoints: no pickles, optimizer state round trip, atomic `latest`, retention, non-finite refusal."""

import json

import pytest
import torch

from ilct.runs.checkpoint import (
    latest_checkpoint, list_checkpoints, load_weights, optimizer_from_files, optimizer_to_files, read_tensors,
    save_checkpoint,
)
from ilct.errors import IlctError


def setup():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    ema = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    opt = torch.optim.RAdam(model.parameters(), lr=1e-3, eps=1e-4, weight_decay=1e-4)
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    return model, ema, opt


def test_optimizer_round_trip():
    model, _, opt = setup()
    tensors, meta = optimizer_to_files(opt)
    json.dumps(meta)  # plain JSON, nothing pickled
    fresh = torch.optim.RAdam(model.parameters(), lr=1e-3, eps=1e-4, weight_decay=1e-4)
    fresh.load_state_dict(optimizer_from_files(tensors, json.loads(json.dumps(meta))))
    a, b = opt.state_dict(), fresh.state_dict()
    for idx in a["state"]:
        for k, v in a["state"][idx].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["state"][idx][k]))


def test_save_keep_and_latest(tmp_path):
    model, ema, opt = setup()
    rng = {"torch_cpu": torch.get_rng_state()}
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step, model, ema, opt, rng, {}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_000000003", "step_000000004"]
    assert latest_checkpoint(tmp_path).name == "step_000000004"
    # a half-written checkpoint (temporary folder) is ignored; a stale pointer falls back to the newest complete one
    (tmp_path / "checkpoints" / ".tmp_step_000000005_1").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step_000000009\n")
    assert latest_checkpoint(tmp_path).name == "step_000000004"
    assert set(read_tensors(latest_checkpoint(tmp_path) / "model.safetensors")) == set(model.state_dict())


def test_refuses_non_finite_weights_and_keeps_previous(tmp_path):
    model, ema, opt = setup()
    save_checkpoint(tmp_path, 1, model, ema, opt, {"torch_cpu": torch.get_rng_state()}, {})
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(IlctError, match="not finite"):
        save_checkpoint(tmp_path, 2, model, ema, opt, {"torch_cpu": torch.get_rng_state()}, {})
    assert latest_checkpoint(tmp_path).name == "step_000000001"


def test_load_weights_reports_shape_mismatch(tmp_path):
    model, ema, opt = setup()
    save_checkpoint(tmp_path, 1, model, ema, opt, {"torch_cpu": torch.get_rng_state()}, {})
    other = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Linear(16, 2))
    with pytest.raises(IlctError, match="shape"):
        load_weights(other, latest_checkpoint(tmp_path) / "model.safetensors", "other")
