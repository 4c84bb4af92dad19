"""`ilct demo` (what `make demo` runs) end to end at toy size: autoencoder, training, grids, and the
quality lines (FID and recall at 1 and 2 steps on the test split, beside the autoencoder's floor)."""

from __future__ import annotations

import json
import math

from ilct.cli import main


def demo_args(out, data, *extra):
    return ["demo", "--out", str(out), "--data-dir", str(data), "--steps", "4", "--ae-steps", "3",
            "--quality-n", "20", "--no-progress", *extra]


def test_demo_reports_its_quality(tmp_path, fake_fmnist, monkeypatch, capsys):
    monkeypatch.setenv("ILCT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(demo_args(out, fake_fmnist)) == 0
    summary = json.loads((out / "summary.json").read_text())
    q = summary["quality"]
    assert q["split"] == "test" and q["n"] == 20 and "(64 images)" in q["reference"]
    for key in ("fid", "recall"):
        assert set(q[key]) == {"1", "2"} and all(math.isfinite(v) for v in q[key].values())
    assert math.isfinite(q["autoencoder_floor_fid"]) and q["autoencoder_floor_fid"] >= 0
    assert summary["train_steps"] == 4 and summary["seconds"]["quality"] >= 0
    printed = capsys.readouterr().out
    assert "1 step: FID" in printed and "the autoencoder's floor" in printed
    assert (out / "samples_1step.png").is_file() and (out / "samples_2step.png").is_file()
    # run again: everything is reused, the same numbers come out (the samples are seeded)
    assert main(demo_args(out, fake_fmnist)) == 0
    assert json.loads((out / "summary.json").read_text())["quality"]["fid"] == q["fid"]


def test_demo_without_quality_and_bad_quality_n(tmp_path, fake_fmnist, monkeypatch, capsys):
    monkeypatch.setenv("ILCT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(demo_args(out, fake_fmnist, "--quality-n", "5")) == 2
    assert "--quality-n" in capsys.readouterr().err and not out.exists()
    assert main(demo_args(out, fake_fmnist, "--quality-n", "0")) == 0
    assert json.loads((out / "summary.json").read_text())["quality"] is None


def test_demo_stopped_by_a_signal_writes_no_summary(tmp_path, fake_fmnist, monkeypatch, capsys):
    """A signal during training: the run is checkpointed (ilct.training.loop), and the demo stops there, with no
    grids or summary of a half-trained model, exit 130; running it again continues."""
    import ilct.demo
    from ilct.training.loop import TrainResult

    monkeypatch.setenv("ILCT_CACHE", str(tmp_path / "cache"))
    real_train = ilct.demo.train
    monkeypatch.setattr(ilct.demo, "train", lambda cfg, run_dir, **kw: TrainResult(run_dir, 2, 0.0, 0.1, 0, preempted=True))
    out = tmp_path / "demo"
    assert main(demo_args(out, fake_fmnist, "--quality-n", "0")) == 130
    assert "make demo` again continues" in capsys.readouterr().out
    assert not (out / "summary.json").exists() and not (out / "samples_1step.png").exists()
    monkeypatch.setattr(ilct.demo, "train", real_train)
    assert main(demo_args(out, fake_fmnist, "--quality-n", "0")) == 0 and (out / "summary.json").is_file()


def test_demo_keeps_a_run_of_an_earlier_preset(tmp_path, fake_fmnist, monkeypatch, capsys):
    """After an upgrade that changed the preset (its backbone, steps, ...), the demo's old run folder is neither
    resumed with the new settings nor overwritten: one error line, exit 2, and the way on."""
    import yaml

    monkeypatch.setenv("ILCT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(demo_args(out, fake_fmnist, "--quality-n", "0")) == 0
    config = out / "run" / "config.yaml"
    old = yaml.safe_load(config.read_text())
    old["model"]["arch"] = "DiT-T/4"  # what an earlier fmnist-ilct would have written
    config.write_text(yaml.safe_dump(old))
    before = {p: p.read_bytes() for p in (out / "run").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(demo_args(out, fake_fmnist, "--quality-n", "0", "--steps", "6")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings than this demo's fmnist-ilct (other model.arch" in err[0] and "mv " in err[0]
    assert {p: p.read_bytes() for p in (out / "run").rglob("*") if p.is_file()} == before
