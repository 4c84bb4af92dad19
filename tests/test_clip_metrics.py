"""ilct.metrics.clips (the clip classifier, score_clips, temporal consistency, frame FID) and the video benchmark's
report (benchmarks/quality/video.py with a stub sampler), on the fake Fashion-MNIST files of conftest."""

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import module_dir
from ilct.data.moving_fmnist import load_moving_fmnist
from ilct.metrics import clips as mc
from ilct.metrics.features import load_fashion_features

ROOT = Path(__file__).resolve().parents[1]
DATA = mc.ClipData(32, 4, 1)  # 4 frames: the tests' classifier trains in seconds


@pytest.fixture(scope="module")
def cache(request, tmp_path_factory):
    return module_dir(request, tmp_path_factory, "cache")


TRAIN = {"steps": 60, "batch_size": 32, "eval_clips": 64}


@pytest.fixture(scope="module")
def scorer(cache, fake_fmnist):
    return mc.load_clip_classifier(cache, str(fake_fmnist), DATA, progress=False, **TRAIN)


@pytest.fixture(scope="module")
def features(cache, fake_fmnist):
    return load_fashion_features()


def real(fake_fmnist, split="test", n=64):
    d = load_moving_fmnist(str(fake_fmnist), split, DATA.resolution, DATA.frames, DATA.frame_stride, count=n)
    return d.clips_at(np.arange(n)), d.labels, d.motions


def test_confusion_counts_asked_against_predicted():
    assert mc.confusion([0, 0, 1, 2], [0, 1, 1, 0], 3) == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_chance_is_the_most_asked_values_frequency():
    assert mc.chance(np.repeat(np.arange(10), 3)) == pytest.approx(0.1)
    assert mc.chance([0, 0, 1, 2]) == 0.5
    assert mc.MOTIONS[mc.FLIPPED[mc.MOTIONS.index("left")]] == "right"
    assert mc.MOTIONS[mc.FLIPPED[mc.MOTIONS.index("up")]] == "up"


def test_classifier_records_its_real_accuracy_and_scores_real_clips_far_above_chance(scorer, features, fake_fmnist):
    meta = scorer.meta
    assert meta["data"] == DATA.key() and meta["fingerprint"].startswith("clip-cls-") and meta["train_seconds"] > 0
    for split in ("test", "heldout"):
        assert set(meta[f"{split}_accuracy"]) == {"class", "motion", "clips"}
    clips, labels, motions = real(fake_fmnist)
    s = mc.score_clips(clips, labels, motions, scorer, features)
    assert s["n"] == 64 and 0 < s["class_chance"] < 0.5 and 0 < s["motion_chance"] < 0.6
    assert s["motion_acc"] >= 3 * 0.25 and s["class_acc"] >= 3 * 0.1
    assert s["motion_acc"] == pytest.approx(meta["test_accuracy"]["motion"])  # the same 64 clips
    cm = np.array(s["class_confusion"])
    assert cm.shape == (10, 10) and cm.sum() == 64 and np.trace(cm) / 64 == pytest.approx(s["class_acc"])
    assert (cm.sum(1) == np.bincount(labels.astype(int), minlength=10)).all()  # rows are the asked classes
    held = mc.score_clips(*real(fake_fmnist, "heldout"), scorer, features)
    assert held["motion_acc"] >= 3 * 0.25 and held["class_acc"] >= 3 * 0.1  # directions the train split never shows
    # asked for something else: shuffled requests score near chance
    rng = np.random.default_rng(0)
    wrong = mc.score_clips(clips, rng.permutation(labels), (motions + rng.integers(1, 4, len(motions))) % 4, scorer, features)
    assert wrong["class_acc"] < s["class_acc"] - 0.2 and wrong["motion_acc"] < 0.3


def test_static_clips_have_chance_motion_and_full_consistency(scorer, features, fake_fmnist):
    clips = real(fake_fmnist, n=16)[0]
    static = np.repeat(clips[:, :1], DATA.frames, axis=1)  # frame 0 held still
    asked = np.repeat(static, 4, axis=0)  # each still clip asked for every direction once
    s = mc.score_clips(asked, np.zeros(len(asked)), np.tile(np.arange(4), 16), scorer, features)
    assert s["motion_acc"] == pytest.approx(0.25) and s["motion_chance"] == pytest.approx(0.25)
    assert s["temporal_consistency"] == 1.0


class Brightness:
    """A stand-in for FashionFeatures: class 1 for a frame brighter than mid-gray, else 0."""

    def predict(self, images):
        return (images.reshape(len(images), -1).mean(1) > 127).astype(np.int64)


def test_temporal_consistency_counts_clips_whose_frame_class_never_changes():
    clips = np.zeros((4, 3, 8, 8, 1), np.uint8)
    clips[1] = 255  # bright throughout
    clips[2, 1] = 255  # one bright frame
    clips[3, 2:] = 255  # bright from frame 2
    assert mc.temporal_consistency(clips, Brightness()) == 0.5
    assert mc.frame_classes(clips, Brightness()).tolist() == [[0, 0, 0], [1, 1, 1], [0, 1, 0], [0, 0, 1]]


def test_frame_fid_is_zero_against_itself_and_large_against_noise(features, fake_fmnist):
    clips = real(fake_fmnist, n=96)[0]
    assert abs(mc.frame_fid(clips, clips, features)) < 1e-6
    assert mc.frame_fid(clips, mc.frame_stats(clips, features), features) == pytest.approx(mc.frame_fid(clips, clips, features))
    noise = np.random.default_rng(0).integers(0, 256, clips.shape, dtype=np.uint8)
    assert mc.frame_fid(noise, clips, features) > 10 * max(mc.frame_fid(real(fake_fmnist, "train", 96)[0], clips, features), 1e-3)


def test_score_clips_rejects_mismatched_requests(scorer, features, fake_fmnist):
    clips = real(fake_fmnist, n=4)[0]
    with pytest.raises(ValueError, match="4 clips, 3 classes"):
        mc.score_clips(clips, [0, 1, 2], [0, 1, 2, 3], scorer, features)
    with pytest.raises(ValueError, match="uint8"):
        mc.clips_input(clips.astype(np.float32))


def test_cache_is_reused_and_a_damaged_one_trained_again(scorer, cache, fake_fmnist, monkeypatch, capsys):
    def no_training(*a, **k):
        raise AssertionError("trained again")

    monkeypatch.setattr(mc, "train_clip_classifier", no_training)
    assert mc.load_clip_classifier(cache, str(fake_fmnist), DATA, **TRAIN).fingerprint() == scorer.fingerprint()
    assert mc.classifier_folder(cache, DATA, TRAIN).name == "moving_fmnist-32x4s1-batch_size32-eval_clips64-steps60"
    assert mc.classifier_folder(cache, DATA, {}).name == "moving_fmnist-32x4s1"  # the real one: never a test's
    monkeypatch.undo()
    other, tiny = mc.ClipData(32, 2, 1), {"steps": 2, "batch_size": 4, "eval_clips": 4}
    folder = mc.classifier_folder(cache, other, tiny)
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"not safetensors")
    (folder / "config.json").write_text("{}")
    fresh = mc.load_clip_classifier(cache, str(fake_fmnist), other, progress=False, **tiny)
    assert "damaged; training it again" in capsys.readouterr().err
    assert fresh.meta["frames"] == 2 and json.loads((folder / "config.json").read_text())["steps"] == 2


def load_video():
    spec = importlib.util.spec_from_file_location("video", ROOT / "benchmarks" / "quality" / "video.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prompts_cover_the_seen_and_held_out_pairs():
    video = load_video()
    seen, held = video.prompts("seen"), video.prompts("heldout")
    assert len(seen) == 30 and len(held) == 10
    assert {(p.cls, p.motion) for p in seen}.isdisjoint({(p.cls, p.motion) for p in held})
    assert held[0].caption == "a t-shirt moving left" and held[0].motion == mc.MOTIONS.index("left")
    assert mc.chance([p.motion for p in seen]) == pytest.approx(8 / 30)
    assert mc.chance([p.motion for p in held]) == pytest.approx(3 / 10)


class StubSampler:
    """Noise clips of DATA's shape, recording what was asked."""

    data, what = DATA, "stub"

    def __init__(self):
        self.calls = []

    def __call__(self, captions, per_prompt, nfe, guidance, seed):
        self.calls.append((tuple(captions), per_prompt, nfe, guidance, seed))
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, (len(captions) * per_prompt, DATA.frames, 32, 32, 1), dtype=np.uint8)


def test_video_report_with_a_stub_sampler(tmp_path, cache, fake_fmnist, monkeypatch):
    video = load_video()
    stub, make_sampler, in_process = StubSampler(), video.make_sampler, video.InProcessSampler
    monkeypatch.setattr(video, "make_sampler", lambda args: stub)
    out, figures = tmp_path / "video.json", tmp_path / "figures"
    video.main(["--run", "runs/none", "--tiny", "--guidance", "2,4", "--nfe", "1,2", "--data-dir", str(fake_fmnist),
                "--cache-dir", str(cache), "--out", str(out), "--figures", str(figures), "--plot", str(figures / "acc.png"), "--no-progress",
                "--clips-out", str(tmp_path / "clips.npz")])
    report = json.loads(out.read_text())
    assert report["command"].startswith("python benchmarks/quality/video.py --run runs/none --tiny")
    assert report["machine"] and report["date"] and report["tiny"] and report["sampler"] == "stub"
    rows = report["rows"]
    assert [(r["split"], r["nfe"], r["guidance"]) for r in rows] == [("seen", 1, 2.0), ("heldout", 1, 2.0)]
    for r in rows:
        assert {"split", "nfe", "guidance", "class_acc", "motion_acc", "class_chance", "motion_chance", "frame_fid"} <= set(r)
        assert 0 <= r["class_acc"] <= 1 and 0 <= r["motion_acc"] <= 1 and np.isfinite(r["frame_fid"])
    assert stub.calls[0] == (("a t-shirt moving right", "a t-shirt moving up"), 2, 1, 2.0, 0)
    assert stub.calls[1][0] == ("a t-shirt moving left", "a pair of trousers moving right")
    for split in ("seen", "heldout"):
        assert {"class_acc", "motion_acc", "frame_fid", "temporal_consistency"} <= set(report["real"][split])
    assert {"test_accuracy", "heldout_accuracy", "train_seconds"} <= set(report["clip_classifier"])
    for r in rows:  # the strict scorer beside the classifier's: noise clips show no garment
        assert r["strict"]["n"] == 4 and r["strict"]["garment"]["acc"] == 0.0 and r["strict"]["class"]["acc"] == 0.0
    for split in ("seen", "heldout"):
        assert report["real"][split]["frozen_strict"]["motion"]["acc"] == 0.0
        assert report["real"][split]["strict"]["n"] == 4
    kept = np.load(tmp_path / "clips.npz")
    assert kept["clips"].dtype == np.uint8 and kept["clips"].shape == (8, DATA.frames, 32, 32, 1)
    assert list(kept["split"]) == ["seen"] * 4 + ["heldout"] * 4 and int(kept["nfe"]) == 1 and float(kept["guidance"]) == 2
    assert list(kept["captions"][:2]) == ["a t-shirt moving right"] * 2 and not kept["garment"].any()
    assert report["clips_out"]["clips"] == 8
    with pytest.raises(SystemExit) as e:
        video.main(["--run", "runs/none", "--clips-out", str(tmp_path / "clips.txt")])
    assert e.value.code == 2
    for wrong in (["--train", "fmnist-video-ilct"], ["--sampler", "cli"]):  # --checkpoint: a trained run, in-process
        with pytest.raises(SystemExit) as e:
            video.main(["--run", "runs/none", "--checkpoint", "runs/none/checkpoints/step_000000500", *wrong])
        assert e.value.code == 2
    opened = []
    monkeypatch.setattr(video, "InProcessSampler", lambda *a: opened.append(a))
    make_sampler(argparse.Namespace(sampler="inprocess", run="r", device="cpu", batch_size=8, text_encoder="",
                                    checkpoint="r/checkpoints/step_000000500"))
    assert opened == [("r", "cpu", 8, "", "r/checkpoints/step_000000500")]
    monkeypatch.setattr(video, "InProcessSampler", in_process)  # a run that does not exist: one line and exit 2
    with pytest.raises(SystemExit) as e:
        make_sampler(argparse.Namespace(sampler="inprocess", run=str(tmp_path / "no-run"), device="cpu", batch_size=8,
                                        text_encoder="", checkpoint=str(tmp_path / "no-run" / "checkpoints" / "x")))
    assert e.value.code == 2
    assert report["plot"] == str(figures / "acc.png") and (figures / "acc.png").is_file()
    assert video.main(["--replot", "--out", str(out), "--plot", str(tmp_path / "re.png")])["rows"] == rows
    assert (tmp_path / "re.png").stat().st_size > 1000  # the figure again, from the JSON alone
    with pytest.raises(SystemExit) as e:
        video.main(["--replot", "--out", str(tmp_path / "nothing.json"), "--plot", str(tmp_path / "no.png")])
    assert e.value.code == 2 and not (tmp_path / "no.png").exists()
    files = [f["file"] for f in report["figures"]]
    assert str(figures / "video_seen_1step_w2.gif") in files and str(figures / "video_heldout_1step_w2.gif") in files
    for f in report["figures"]:  # real clips only of the captions shown (where the few real clips have one)
        assert f["captions"] and (not f.get("real") or Path(f["file"]).name.startswith("video_real_"))
    assert all(Path(f).is_file() for f in files)


def load_rescore():
    spec = importlib.util.spec_from_file_location("rescore_clips", ROOT / "benchmarks" / "quality" / "rescore_clips.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kept_clips_rescored_by_the_same_scorer_agree_and_a_changed_verdict_is_counted(tmp_path, cache, fake_fmnist,
                                                                                       monkeypatch):
    video, rescore = load_video(), load_rescore()
    monkeypatch.setattr(video, "make_sampler", lambda args: StubSampler())
    kept = tmp_path / "clips.npz"
    video.main(["--run", "runs/none", "--tiny", "--guidance", "1", "--nfe", "1", "--data-dir", str(fake_fmnist),
                "--cache-dir", str(cache), "--out", str(tmp_path / "video.json"), "--figures", "", "--plot", "",
                "--no-progress", "--clips-out", str(kept)])
    with np.load(kept) as f:
        arrays = {k: f[k] for k in f.files}
    fingerprint = json.loads((tmp_path / "video.json").read_text())["clip_classifier"]["fingerprint"]
    assert str(arrays["clip_classifier"]) == fingerprint  # the npz names the scorer that judged it
    real = rescore.load_kept(str(kept))
    arrays["class_ok"] = arrays["class_ok"].copy()
    arrays["class_ok"][0] = ~arrays["class_ok"][0]  # one seen clip's kept verdict changed
    changed = tmp_path / "changed.npz"
    np.savez_compressed(changed, **arrays)
    out = tmp_path / "rescore.json"
    assert rescore.main(["--clips", str(changed), "--out", str(out), "--root", str(fake_fmnist), "--cache", str(cache),
                         "--tiny"]) == 0
    report = json.loads(out.read_text())
    assert report["kept_by"] == report["rescored_by"] == fingerprint and report["tiny"]
    rows = {r["split"]: r for r in report["rows"]}
    assert rows["heldout"]["class_ok"]["agree"] == rows["heldout"]["garment"]["agree"] == 1.0
    assert rows["seen"]["motion_ok"]["agree"] == 1.0 and rows["seen"]["class_ok"]["agree"] == 0.75
    assert rows["seen"]["class_ok"]["kept_only"] + rows["seen"]["class_ok"]["rescored_only"] == 1
    assert len(real["clips"]) == 8


def test_rescore_refuses_what_video_py_did_not_write(tmp_path, capsys):
    rescore = load_rescore()
    out = tmp_path / "out.json"
    bad_zip = tmp_path / "broken.npz"
    bad_zip.write_bytes(b"not a zip")
    no_keys = tmp_path / "nokeys.npz"
    np.savez(no_keys, clips=np.zeros((2, 4, 32, 32, 1), np.uint8))
    floats = tmp_path / "floats.npz"
    np.savez(floats, clips=np.zeros((2, 4, 32, 32, 1)), split=np.array(["seen"] * 2), want_class=np.zeros(2, int),
             want_motion=np.zeros(2, int), class_ok=np.zeros(2, bool), motion_ok=np.zeros(2, bool), garment=np.zeros(2, bool))
    for path, needle in [(tmp_path / "missing.npz", "not a readable npz"), (bad_zip, "not a readable npz"),
                         (no_keys, "lacks split"), (floats, "must be uint8")]:
        assert rescore.main(["--clips", str(path), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1
    good = tmp_path / "good.npz"
    np.savez(good, clips=np.zeros((2, 4, 32, 32, 1), np.uint8), split=np.array(["seen"] * 2), want_class=np.zeros(2, int),
             want_motion=np.zeros(2, int), class_ok=np.zeros(2, bool), motion_ok=np.zeros(2, bool), garment=np.zeros(2, bool))
    size = good.stat().st_size
    assert rescore.main(["--clips", str(good), "--out", str(good)]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert not out.exists() and good.stat().st_size == size
