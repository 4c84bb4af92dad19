"""Every command a closed world (issue 34): sample, eval, analyze, clips, schedule, demo and autoencoder held to
the rules `ilct train` keeps. Each case of the table exits 2 with one line, no traceback, and leaves every file
that existed before byte-identical; its figures go into docs/reliability.json (tests/reliability_report.py).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from ilct.runs.checkpoint import list_checkpoints
from ilct.cli import main
from conftest import module_dir
from reliability_report import record
from test_hostile import CKPT, World, first_float, run_table, tensors, touch, user_folder

FIGURES: dict = {}
SHOW = bool(os.environ.get("ILCT_SHOW_CASES"))


@pytest.fixture(scope="module", autouse=True)
def write_figures():
    yield
    if FIGURES:
        record(FIGURES)


@pytest.fixture(scope="module")
def world(request, tmp_path_factory, tiny_autoencoder, fake_fmnist):
    return World(module_dir(request, tmp_path_factory, "closed"), tiny_autoencoder, fake_fmnist)


# --------------------------------------------------------------------------- damaging edits


def retrained_autoencoder(w: World, name: str) -> Path:
    """A run whose autoencoder folder now holds other weights (as after `ilct autoencoder --force` there)."""
    run = w.copy(name)
    ae = w.cases / f"{name}_ae"
    shutil.copytree(w.ae, ae)
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["autoencoder"]["path"] = str(ae)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    shutil.copy(w.other_ae / "model.safetensors", ae / "model.safetensors")
    return run


def state_arch(w: World, name: str, arch: str) -> Path:
    run = w.copy(name)
    path = run / "checkpoints" / CKPT / "state.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "arch": arch}))
    return run


def latest_is_a_folder(w: World, name: str) -> Path:
    run = w.copy(name)
    (run / "checkpoints" / "latest").unlink()
    (run / "checkpoints" / "latest").mkdir()
    return run


def step_link(w: World, name: str) -> Path:
    run = w.copy(name)
    (run / "checkpoints" / "step_000000016").symlink_to(run / "checkpoints" / CKPT)
    return run


def checkpoints_a_file(w: World, name: str) -> Path:
    run = w.copy(name)
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").write_text("not a folder\n")
    return run


# --------------------------------------------------------------------------- the table


def cases(w: World, tmp: Path) -> list[tuple[str, str, object]]:
    """(class, name, argv or a function giving argv). Functions run just before their case."""
    return _output_cases(w, tmp) + _number_cases(w, tmp) + _run_rule_cases(w, tmp)


def _output_cases(w: World, tmp: Path) -> list[tuple[str, str, object]]:
    """Nothing is written anywhere under a run, checkpoint, autoencoder or latent directory."""
    run, ckpt = w.run, w.run / "checkpoints" / CKPT
    an = ["analyze", "--latents", str(w.lat), "--no-pixels"]
    return [
        ("outputs under a run", "sample --out RUN/samples/step_000000012.png", w.sample(run, out=str(run / "samples" / "step_000000012.png"))),
        ("outputs under a run", "sample --out RUN/grid.png (a new file in the run)", w.sample(run, out=str(run / "grid.png"))),
        ("outputs under a run", "sample --npz RUN/samples/x.npz", w.sample(run, "--npz", str(run / "samples" / "x.npz"))),
        ("outputs under a run", "sample --out another run's samples/", w.sample(run, out=str(w.other / "samples" / "x.png"))),
        ("outputs under a run", "sample --out a sub-folder of the autoencoder", w.sample(run, out=str(w.ae / "sub" / "x.png"))),
        ("outputs under a run", "sample --npz a sub-folder of a latent directory", w.sample(run, "--npz", str(w.lat / "sub" / "x.npz"))),
        ("outputs under a run", "sample --out a sub-folder of a checkpoint", w.sample(run, out=str(ckpt / "sub" / "x.png"))),
        ("outputs under a run", "eval --json RUN/samples/x.json", ["eval", "--run", str(run), "--json", str(run / "samples" / "x.json")]),
        ("outputs under a run", "eval --json RUN/x.json", ["eval", "--run", str(run), "--json", str(run / "x.json")]),
        ("outputs under a run", "eval --json into another run", ["eval", "--run", str(run), "--json", str(w.other / "x.json")]),
        ("outputs under a run", "analyze --out RUN/samples", an + ["--out", str(run / "samples"), "--name", "x"]),
        ("outputs under a run", "analyze --out the autoencoder", an + ["--out", str(w.ae), "--name", "x"]),
        ("outputs under a run", "clips --out a run folder",
         ["clips", "--data", f"moving_fmnist:{w.data}", "--out", str(run), "--name", "x"]),
        ("outputs under a run", "demo --out an existing run", ["demo", "--out", str(run), "--data-dir", str(w.data)]),
        ("outputs under a run", "demo --out a folder of the user's own files",
         lambda: ["demo", "--out", str(user_folder(tmp / "mine")), "--data-dir", str(w.data)]),
        ("outputs under a run", "demo --out an autoencoder", ["demo", "--out", str(w.ae), "--data-dir", str(w.data)]),
        ("outputs under a run", "demo --out a folder that holds folders named run/ and cache/ (as / holds run/)",
         lambda: ["demo", "--out", str(user_folder(tmp / "root" / "run").parent), "--data-dir", str(w.data)]),
        ("outputs under a run", "export --out RUN/model", ["export", "--run", str(run), "--out", str(run / "model")]),
        ("outputs under a run", "export --out the autoencoder", ["export", "--run", str(run), "--out", str(w.ae)]),
        ("outputs under a run", "export --out a folder of the user's own files",
         lambda: ["export", "--run", str(run), "--out", str(user_folder(tmp / "mine_x"))]),
        ("outputs under a run", "sample --model a run folder (not an export)", ["sample", "--model", str(run), "--out", str(tmp / "m.png")]),
    ]


def _number_cases(w: World, tmp: Path) -> list[tuple[str, str, object]]:
    """Numbers out of range, refused before any work (the timing test below checks the 'before')."""
    run, S = w.run, w.sample
    ev = ["eval", "--run", str(run)]
    cl = ["clips", "--data", f"moving_fmnist:{w.data}", "--out", str(tmp / "clips")]
    enc = ["encode", "--data", f"fashion_mnist:{w.data}", "--autoencoder", f"builtin:{w.ae}", "--out", str(tmp / "lat"),
           "--no-progress"]
    return [
        ("numbers", "sample --guidance nan", S(run, "--guidance", "nan")),
        ("numbers", "sample --guidance inf", S(run, "--guidance", "inf")),
        ("numbers", "sample --guidance 1e30", S(run, "--guidance", "1e30")),
        ("numbers", "sample --steps 100000000", S(run, "--steps", "100000000")),
        ("numbers", "sample --n 1000000000 (more memory than the machine has)", S(run, "--n", "1000000000")),
        ("numbers", "sample --n 10^12", S(run, "--n", str(10**12))),
        ("numbers", "sample --batch-size 10^9", S(run, "--batch-size", str(10**9))),
        ("numbers", "sample --scale 100000", S(run, "--scale", "100000")),
        ("numbers", "sample --duration 0", S(run, "--duration", "0")),
        ("numbers", "sample --class -1 (unconditional run)", S(run, "--class", "-1")),
        ("numbers", "eval --steps 100000000", ev + ["--steps", "100000000"]),
        ("numbers", "eval --steps 0", ev + ["--steps", "0,1"]),
        ("numbers", "eval --n 10^12", ev + ["--n", str(10**12)]),
        ("numbers", "eval --batch-size 0", ev + ["--batch-size", "0"]),
        ("numbers", "eval --ref-n -5", ev + ["--ref-n", "-5"]),
        ("numbers", "eval --tau nan", ev + ["--tau", "nan"]),
        ("numbers", "analyze --levels 10^12 (a schedule beyond memory)",
         ["analyze", "--latents", str(w.lat), "--run", str(run), "--levels", str(10**12), "--out", str(tmp / "an")]),
        ("numbers", "analyze --n 10^12", ["analyze", "--latents", str(w.lat), "--n", str(10**12), "--out", str(tmp / "an")]),
        ("numbers", "clips --resolution 100000", cl + ["--resolution", "100000"]),
        ("numbers", "clips --frames 10^6", cl + ["--frames", str(10**6)]),
        ("numbers", "clips --n 10^8 (more memory than the machine has)", cl + ["--n", str(10**8)]),
        ("numbers", "clips --scale 0", cl + ["--scale", "0"]),
        ("numbers", "schedule --total-steps 10^12", ["schedule", "--config", "fmnist-ilct", "--total-steps", str(10**12)]),
        ("numbers", "schedule --latent-shape 4x10^7x10^7", ["schedule", "--config", "ict", "--latent-shape", "4x10000000x10000000"]),
        ("numbers", "demo --steps 0", ["demo", "--out", str(tmp / "demo"), "--data-dir", str(w.data), "--steps", "0"]),
        ("numbers", "demo --steps 10^12", ["demo", "--out", str(tmp / "demo"), "--data-dir", str(w.data), "--steps", str(10**12)]),
        ("numbers", "demo --ae-steps -1", ["demo", "--out", str(tmp / "demo"), "--data-dir", str(w.data), "--ae-steps", "-1"]),
        ("numbers", "encode --batch-size 10^9", enc + ["--batch-size", str(10**9)]),
        ("numbers", "encode --shard-size 0", enc + ["--shard-size", "0"]),
        ("numbers", "encode --resolution 10^6", enc + ["--resolution", str(10**6)]),
        ("numbers", "encode --limit 0", enc + ["--limit", "0"]),
        ("numbers", "encode --max-pixels 0", enc + ["--max-pixels", "0"]),
        ("numbers", "encode --batch-size 65536 at --resolution 4096 (more memory than the machine has)",
         enc + ["--batch-size", "65536", "--resolution", "4096"]),
        ("numbers", "autoencoder --batch-size 10^9",
         ["autoencoder", "--out", str(tmp / "ae"), "--data-dir", str(w.data), "--batch-size", str(10**9)]),
        ("numbers", "autoencoder --latent-channels 10^9",
         ["autoencoder", "--out", str(tmp / "ae"), "--data-dir", str(w.data), "--latent-channels", str(10**9)]),
    ]


def _run_rule_cases(w: World, tmp: Path) -> list[tuple[str, str, object]]:
    """The autoencoder's fingerprint, the checkpoint's run and architecture, the checkpoints/ layout, caches."""
    other_ckpt = str(w.other / "checkpoints" / "step_000000008")
    return [
        ("run rules", "sample after the autoencoder folder was retrained", lambda: w.sample(retrained_autoencoder(w, "ae_s"))),
        ("run rules", "eval after the autoencoder folder was retrained",
         lambda: ["eval", "--run", str(retrained_autoencoder(w, "ae_e")), "--no-progress"]),
        ("run rules", "analyze --run after the autoencoder folder was retrained",
         lambda: ["analyze", "--latents", str(w.lat), "--run", str(retrained_autoencoder(w, "ae_a")), "--out", str(tmp / "an")]),
        ("run rules", "sample --checkpoint of another run", w.sample(w.run, "--checkpoint", other_ckpt)),
        ("run rules", "eval --checkpoint of another run", ["eval", "--run", str(w.run), "--checkpoint", other_ckpt]),
        ("run rules", "analyze --checkpoint of another run",
         ["analyze", "--latents", str(w.lat), "--run", str(w.run), "--checkpoint", other_ckpt, "--out", str(tmp / "an")]),
        ("run rules", "sample: state.json names another architecture", lambda: w.sample(state_arch(w, "arch", "DiT-XL/2"))),
        ("run rules", "sample --allow-other-checkpoint of another architecture",
         lambda: w.sample(w.run, "--allow-other-checkpoint", "--checkpoint",
                          str(state_arch(w, "arch2", "DiT-B/2") / "checkpoints" / CKPT))),
        ("run rules", "sample --checkpoint that does not exist", w.sample(w.run, "--checkpoint", str(tmp / "nope"))),
        ("run rules", "resume with checkpoints/latest a folder", lambda: w.resume(latest_is_a_folder(w, "latest_dir"))),
        ("run rules", "resume with a step folder that is a link", lambda: w.resume(step_link(w, "step_link"))),
        ("run rules", "resume with checkpoints/ a file", lambda: w.resume(checkpoints_a_file(w, "ckpt_file"))),
        ("run rules", "eval --cache-dir is a file", lambda: ["eval", "--run", str(w.run), "--cache-dir", str(touch(tmp / "cache_file"))]),
        ("run rules", "schedule --config of a YAML naming an unknown objective",
         lambda: ["schedule", "--config", str(_yaml(tmp / "obj.yaml", {"base": "fmnist-ilct", "train": {"objective": "nope"}}))]),
    ]


def _yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_closed_world_cases_exit_2_with_one_line_and_change_nothing(world, tmp_path, capsys, monkeypatch):
    names, per_class = run_table(world, cases(world, tmp_path), tmp_path, capsys, monkeypatch, show=SHOW)
    FIGURES.update({"bad_inputs_closed_world_tried": len(names), "bad_inputs_closed_world_clean": len(names),
                    "bad_inputs_closed_world_by_class": per_class, "closed_world_cases": names})
    assert len(names) >= 40


# --------------------------------------------------------------------------- refused fast, before any work


def fast_cases(w: World, tmp: Path) -> dict[str, list[str]]:
    """One invalid numeric argument for every subcommand."""
    return {
        "autoencoder": ["autoencoder", "--out", str(tmp / "ae"), "--data-dir", str(w.data), "--steps", "0"],
        "train": w.train(tmp / "t", "--set", "train.total_steps=0"),
        "sample": w.sample(w.run, "--steps", "0"),
        "schedule": ["schedule", "--config", "fmnist-ilct", "--total-steps", "-3"],
        "encode": ["encode", "--data", f"fashion_mnist:{w.data}", "--autoencoder", f"builtin:{w.ae}",
                   "--out", str(tmp / "lat"), "--batch-size", "0"],
        "analyze": ["analyze", "--latents", str(w.lat), "--n", "0", "--out", str(tmp / "an")],
        "eval": ["eval", "--run", str(w.run), "--n", "-1"],
        "clips": ["clips", "--data", f"moving_fmnist:{w.data}", "--out", str(tmp / "c"), "--n", "0"],
        "export": ["export", "--run", str(w.run), "--out", str(tmp / "x"), "--ema-std", "nan"],
        "demo": ["demo", "--out", str(tmp / "demo"), "--data-dir", str(w.data), "--steps", "-1"],
    }


def test_every_subcommand_refuses_an_invalid_number_in_under_2_seconds(world, tmp_path, capsys):
    from ilct.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    table = fast_cases(world, tmp_path)
    assert set(table) == commands  # a new subcommand needs its case here
    for name, argv in table.items():
        capsys.readouterr()
        t0 = time.perf_counter()
        rc = main(argv)
        seconds = time.perf_counter() - t0
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("ilct: error:"), (name, err)
        assert seconds < 2.0, (name, seconds)
    assert not (tmp_path / "demo" / "autoencoder").exists() and not (tmp_path / "lat").exists()


# --------------------------------------------------------------------------- what still works, and how


def test_sample_falls_back_to_the_newest_checkpoint_that_loads(world, tmp_path, capsys):
    """Like --resume: a newest checkpoint whose EMA weights do not load is passed over, with one note."""
    run = world.copy("fallback", only=None)
    newest = list_checkpoints(run)[-1]
    tensors(newest / "ema.safetensors", first_float(lambda v: v * float("nan")))
    out = tmp_path / "fallback.png"
    assert main(world.sample(run, out=str(out))) == 0
    captured = capsys.readouterr()
    notes = [line for line in captured.err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and newest.name in notes[0], captured.err
    assert out.is_file() and list_checkpoints(run)[-2].name in captured.out


def test_the_escapes_are_honoured(world, tmp_path, capsys):
    """--allow-other-autoencoder decodes through the retrained folder; --allow-other-checkpoint samples another
    run's checkpoint of the same network."""
    run = retrained_autoencoder(world, "ae_ok")
    assert main(world.sample(run, "--allow-other-autoencoder", out=str(tmp_path / "a.png"))) == 0
    other = str(world.other / "checkpoints" / "step_000000008")
    assert main(world.sample(world.run, "--checkpoint", other, "--allow-other-checkpoint", out=str(tmp_path / "b.png"))) == 0
    assert "step_000000008 (step 8)" in capsys.readouterr().out


def test_a_signal_during_sampling_says_what_was_left(world, tmp_path, capsys, monkeypatch):
    """A signal while sampling ends with 128 + signal and a line that does not claim training was stopped."""
    import signal

    import ilct.generate
    from ilct.training.preempt import RECEIVED, Interrupted

    def interrupted(*a, **k):
        RECEIVED.append(signal.SIGTERM)
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(ilct.generate, "generate", interrupted)
    out = tmp_path / "sig.png"
    assert main(world.sample(world.run, out=str(out))) == 128 + signal.SIGTERM
    err = capsys.readouterr().err
    assert "nothing was written" in err and "trained" not in err and not out.exists()


def test_branch_from_a_run_whose_checkpoint_is_rotated_away_while_read(world, tmp_path, capsys, monkeypatch):
    """--branch-from a run that is still training: its trainer may delete the checkpoint being read (rotation).
    Everything is read before the new run is written, and the race ends in one line with nothing written."""
    import ilct.training.branch

    source = world.copy("rotating", only=None)
    real_restore = ilct.training.branch.restore

    def rotated(path, *args):
        shutil.rmtree(path)  # the source's trainer keeps only its newest checkpoints
        return real_restore(path, *args)

    monkeypatch.setattr(ilct.training.branch, "restore", rotated)
    new = tmp_path / "branch"
    assert main(["train", "--branch-from", str(source / "checkpoints" / "step_000000008"), "--out", str(new), "--no-progress",
                 "--set", f"data.cache_dir={world.cache}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was deleted while it was read" in err[0], err
    assert not new.exists()
