"""ilct.metrics.clip_verdicts (the strict clip scorer of issue 36) and a tiny run of its control benchmark
(benchmarks/quality/clip_scorer.py), on the fake Fashion-MNIST files of conftest."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import module_dir
from ilct.data.clips import DIRECTIONS
from ilct.data.moving_fmnist import load_moving_fmnist
from ilct.metrics import clip_verdicts as cv
from ilct.metrics import clips as mc

ROOT = Path(__file__).resolve().parents[1]
DATA = mc.ClipData(32, 4, 1)
TRAIN = {"steps": 60, "batch_size": 32, "eval_clips": 64}


@pytest.fixture(scope="module")
def scorer(request, tmp_path_factory, fake_fmnist):
    return mc.load_clip_classifier(module_dir(request, tmp_path_factory, "cache"), str(fake_fmnist), DATA, progress=False, **TRAIN)


def real(fake_fmnist, split="test", n=48):
    d = load_moving_fmnist(str(fake_fmnist), split, DATA.resolution, DATA.frames, DATA.frame_stride, count=n)
    return d.clips_at(np.arange(n)), d.labels[:n], d.motions[:n]


def test_difference_interval_golden_values():
    # Newcombe (1998), Statistics in Medicine 17:873, table II, method 10: 56/70 - 48/80 and 9/10 - 3/10
    assert cv.difference(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    assert cv.difference(9, 10, 3, 10) == pytest.approx((0.1705, 0.8090), abs=1e-4)
    lo, hi = cv.difference(0, 10, 0, 10)
    assert lo == pytest.approx(-hi) and hi == pytest.approx(cv.wilson(0, 10)[1])  # symmetric around 0
    assert cv.difference(3, 10, 9, 10) == pytest.approx((-0.8090, -0.1705), abs=1e-4)  # the swap mirrors it


def test_wilson_interval_golden_values():
    assert cv.wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert cv.wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert cv.wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert cv.wilson(0, 0) == (0.0, 1.0)
    lo, hi = cv.wilson(315, 1000)
    assert lo < 0.315 < hi and hi - lo == pytest.approx(2 * 1.96 * (0.315 * 0.685 / 1000) ** 0.5, rel=0.01)


def test_radii_are_measured_to_other_clips_only():
    # two clips of two frames on a line: 0, 0.1 (clip 0) and 5, 5.3 (clip 1)
    f = torch.tensor([[0.0], [0.1], [5.0], [5.3]], dtype=torch.float64)
    r = cv.radii_across_clips(f, np.array([0, 0, 1, 1]), k=1)
    assert r.tolist() == pytest.approx([5.0, 4.9, 4.9, 5.2])
    r2 = cv.radii_across_clips(f, np.array([0, 1, 2, 3]), k=1)  # every frame its own clip: the plain k-NN radius
    assert r2.tolist() == pytest.approx([0.1, 0.1, 0.3, 0.3])


def test_excursion_follows_a_moving_dot_and_blank_frames_stay_centred():
    clips = np.zeros((3, 3, 32, 32, 1), np.uint8)
    for f in range(3):
        clips[0, f, 10, 5 + 2 * f] = 255  # right by 2 px a frame
        clips[1, f, 10, 5 + 2 * (f % 2)] = 255  # right, then back: a bounce
    path = cv.centre_path(clips)
    assert path[0, -1] == pytest.approx([4, 0], abs=0.3) and path[2].tolist() == [[0.0, 0.0]] * 3
    right, left = DIRECTIONS.index("right"), DIRECTIONS.index("left")
    assert cv.excursion(clips, [right, right, right]) == pytest.approx([4, 2, 0], abs=0.3)  # the largest, not the last
    assert cv.excursion(clips, [left, left, left]) == pytest.approx([0, 0, 0], abs=0.3)


def test_real_clips_show_a_garment_and_noise_and_frozen_clips_fail(scorer, fake_fmnist):
    clips, cls, mot = real(fake_fmnist)
    ref_clips = load_moving_fmnist(str(fake_fmnist), "train", 32, 4, 1, count=96)
    reference = cv.Reference.of(scorer, ref_clips.clips_at(np.arange(96)), k=3)
    assert reference.clips == 96 and reference.features.shape == (96 * 4, 64) and reference.k == 3
    ok = cv.clip_verdicts(clips, cls, mot, scorer, reference)
    assert ok["garment"].mean() >= 0.5 and ok["class_ok"].mean() > 0.3 and ok["motion_ok"].mean() > 0.3
    assert not (ok["class_ok"] & ~ok["garment"]).any() and not (ok["motion_ok"] & ~ok["garment"]).any()
    noise = np.random.default_rng(0).integers(0, 256, clips.shape, dtype=np.uint8)
    bad = cv.clip_verdicts(noise, cls, mot, scorer, reference)
    assert bad["garment"].mean() < 0.1 and (bad["shown_class"][~bad["garment"]] == -1).all()
    frozen = np.repeat(clips[:, :1], clips.shape[1], axis=1)
    assert not cv.clip_verdicts(frozen, cls, mot, scorer, reference)["motion_ok"].any()  # no shift, no motion
    s = cv.strict_scores(clips, cls, mot, scorer, reference)
    assert s["n"] == 48 and s["class"]["k"] == int(ok["class_ok"].sum()) and s["class"]["n"] == 48
    assert s["class"]["ci95"][0] <= s["class"]["acc"] <= s["class"]["ci95"][1]
    cm = np.array(s["confusion"])
    assert cm.shape == (10, 11) and cm.sum() == 48  # the last column: no garment
    assert cm[:, 10].sum() == int((~ok["garment"]).sum())
    assert sum(r["n"] for r in s["per_class"].values()) == 48


def test_verdicts_reject_mismatched_requests_and_too_small_references(scorer, fake_fmnist):
    clips, cls, mot = real(fake_fmnist, n=8)
    with pytest.raises(ValueError, match="more than k"):
        cv.Reference.of(scorer, clips[:3], k=3)
    reference = cv.Reference.of(scorer, clips, k=3)
    with pytest.raises(ValueError, match="8 clips, 7 classes"):
        cv.clip_verdicts(clips, cls[:7], mot, scorer, reference)


def test_clip_scorer_benchmark_tiny_run(tmp_path, fake_fmnist, tiny_autoencoder):
    spec = importlib.util.spec_from_file_location("clip_scorer", ROOT / "benchmarks" / "quality" / "clip_scorer.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "controls.json"
    report = bench.main(["--tiny", "--data-dir", str(fake_fmnist), "--cache-dir", str(tmp_path / "cache"),
                         "--autoencoder", str(tiny_autoencoder), "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["command"].startswith("python benchmarks/quality/clip_scorer.py --tiny") and report["machine"]
    rows = {(r["split"], r["control"]): r for r in report["rows"]}
    assert set(rows) == {(s, c) for s in ("seen", "heldout") for c in (*bench.CONTROLS, "autoencoded")}
    assert report["autoencoder"]["fingerprint"]
    for (split, control), r in rows.items():
        assert r["strict"]["n"] == 16 and {"acc", "ci95", "k", "n"} <= set(r["strict"]["class"])
        assert r["strict"]["motion"]["acc"] <= r["strict"]["garment"]["acc"]
        if control == "frozen":
            assert r["strict"]["motion"]["acc"] == 0.0
    with pytest.raises(SystemExit) as e:
        bench.main(["--tiny", "--controls", "real,sharp", "--out", str(tmp_path / "bad.json")])
    assert e.value.code == 2 and not (tmp_path / "bad.json").exists()
    few = bench.main(["--tiny", "--data-dir", str(fake_fmnist), "--cache-dir", str(tmp_path / "cache"),
                      "--controls", "noise", "--autoencoder", str(tiny_autoencoder)])
    assert [(r["split"], r["control"]) for r in few["rows"]] == [(s, c) for s in ("seen", "heldout")
                                                                  for c in ("noise", "autoencoded")]
    assert few["rows"][1]["strict"] == rows[("seen", "autoencoded")]["strict"]  # the same real clips, encoded
