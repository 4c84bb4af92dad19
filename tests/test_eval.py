"""`ilct eval` on a seconds-long run: settings per tau, the detector protocol, exact uint8 samples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import module_dir
from ilct.cli import main
from test_end_to_end import tiny_config, train_args


class PoolDetector(torch.nn.Module):
    """A stand-in FID detector: 4x4 average pools of x / 255 with return_features=True, (N, 1008) otherwise."""

    def forward(self, x, return_features: bool = False):
        if return_features:
            return torch.nn.functional.adaptive_avg_pool2d(x / 255.0, 4).flatten(1)
        return torch.zeros(x.shape[0], 1008)


@pytest.fixture(scope="module")
def run_and_detector(request, tmp_path_factory, tiny_autoencoder, fake_fmnist):
    tmp = module_dir(request, tmp_path_factory, "eval")
    out = tmp / "run"
    assert main(train_args(tiny_config(tmp), tiny_autoencoder, fake_fmnist, out, tmp / "cache")) == 0
    detector = tmp / "inception-2015-12-05.pt"
    torch.jit.script(PoolDetector()).save(str(detector))
    return {"run": out, "detector": detector, "cache": tmp / "cache"}


def eval_args(r, *extra: str) -> list[str]:
    return ["eval", "--run", str(r["run"]), "--n", "10", "--features", "inception", "--inception-weights",
            str(r["detector"]), "--cache-dir", str(r["cache"]), "--device", "cpu", "--no-progress", *extra]


def test_eval_reports_each_tau_for_two_steps(run_and_detector, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(eval_args(run_and_detector, "--steps", "1,2", "--tau", "0.5,1.0,1.382", "--json", str(out))) == 0
    res = json.loads(out.read_text())
    keys = ["1", "2@tau=0.5", "2@tau=1", "2@tau=1.382"]
    assert [r["key"] for r in res["rows"]] == keys and list(res["fid"]) == keys == list(res["recall"])
    assert [r["tau"] for r in res["rows"]] == [None, 0.5, 1.0, 1.382]
    assert [r["sigmas"] for r in res["rows"]] == [[80.0], [80.0, 0.5], [80.0, 1.0], [80.0, 1.382]]
    assert all(math.isfinite(r["fid"]) and 0 <= r["recall"] <= 1 for r in res["rows"])
    assert len({r["fid"] for r in res["rows"][1:]}) == 3  # another tau, other samples
    assert "return_features=True" in res["features"] and res["features_fingerprint"].endswith("-pool3")
    # the results file names how it was made (issue 37): the command, the machine and the date
    assert res["command"].startswith("ilct eval --run ") and "--tau 0.5,1.0,1.382" in res["command"]
    assert "CPUs" in res["machine"] and "torch" in res["machine"] and len(res["date"]) == 10
    assert res["reference_n"] == 256 and "(256 images)" in res["reference"]  # a built-in dataset: all of it
    printed = capsys.readouterr().out
    assert "2 step(s), tau 1.382: FID" in printed and "1 step(s): FID" in printed
    # without --tau: one 2-step setting at the default tau (the authors' 1.382), recorded
    assert main(eval_args(run_and_detector, "--steps", "2", "--ref-n", "100", "--json", str(out))) == 0
    res = json.loads(out.read_text())
    assert list(res["fid"]) == ["2"] and res["rows"][0]["sigmas"][1] == pytest.approx(1.382, abs=5e-4)
    assert res["reference_n"] == 100


@pytest.mark.parametrize("extra,needle", [
    (["--steps", "1,2", "--tau", "0.001"], "--tau values must decrease and lie in"),
    (["--steps", "2", "--tau", "80"], "--tau values must decrease and lie in"),
    (["--steps", "2", "--tau", "1.0,abc"], "--tau expects comma-separated numbers"),
    (["--steps", "1", "--tau", "1.0"], "add 2 to --steps"),
    (["--steps", "2", "--tau", "1.0,1.0"], "repeated"),
    (["--steps", "2", "--tau", ","], "--tau is empty"),
    (["--steps", "2", "--ref-n", "-1"], "--ref-n"),
])
def test_eval_refuses_bad_taus_in_one_line(run_and_detector, capsys, extra, needle):
    assert main(eval_args(run_and_detector, *extra)) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_fid_features_see_the_exact_uint8_samples(run_and_detector, monkeypatch):
    """The extractor gets the decoder's uint8 arrays themselves: no file, no JPEG, no rounding in between."""
    import ilct.metrics.evaluate as ev
    from ilct.runs.opened import open_run
    from ilct.generate import generate

    seen = []
    real_make = ev.make_extractor

    def spy_make(*args, **kwargs):
        extract = real_make(*args, **kwargs)

        class Spy:
            name = extract.name
            fingerprint = extract.fingerprint

            def __call__(self, images, batch_size=100):
                seen.append(images)
                return extract(images)

        return Spy()

    monkeypatch.setattr(ev, "make_extractor", spy_make)
    r = run_and_detector
    ev.evaluate_run(str(r["run"]), [1], 10, 3, "inception", str(r["detector"]), r["cache"], device="cpu", progress=False)
    run = open_run(str(r["run"]), device="cpu")
    with torch.inference_mode():
        expect = generate(run.model, run.autoencoder, run.stats, run.cfg, 10, 1, 3)
    samples = seen[-1]
    assert samples.dtype == np.uint8 and np.array_equal(samples, expect)


def test_reference_set_sizes(tmp_path, fake_fmnist, monkeypatch):
    """Image folders: the first 50,000 images by default (all, if fewer); built-in datasets: all; --ref-n N: N."""
    from PIL import Image

    import ilct.metrics.evaluate as ev
    from ilct.config import load_config

    for k in range(5):
        Image.fromarray(np.full((12, 12, 3), 40 * k, np.uint8)).save(tmp_path / f"{k}.png")
    folder = load_config("fmnist-ilct", ["data.dataset=image_folder", f"data.root={tmp_path}", "data.resolution=8"])
    fm = load_config("fmnist-ilct", [f"data.root={fake_fmnist}"])
    assert len(ev.reference_set("inception", folder, str(fake_fmnist), None)) == 5
    monkeypatch.setattr(ev, "FOLDER_REFERENCE_N", 3)  # the 50,000 cap, scaled down
    capped = ev.reference_set("inception", folder, str(fake_fmnist), None)
    assert len(capped) == 3 and capped.name.endswith("[:3]")
    assert len(ev.reference_set("inception", folder, str(fake_fmnist), 0)) == 5  # 0 = all
    assert len(ev.reference_set("inception", fm, str(fake_fmnist), None)) == 256  # built-in: all, as before
    assert len(ev.reference_set("fmnist", fm, str(fake_fmnist), 100)) == 100


def test_damaged_cached_reference_features_are_computed_again(run_and_detector, tmp_path, capsys):
    """A corrupt cached evaluation file (truncated, or not an npz at all) is a note and a recomputation,
    never a traceback; the numbers equal those from a fresh cache."""
    cache = tmp_path / "cache"
    first = tmp_path / "first.json"
    args = lambda c, j: ["eval", "--run", str(run_and_detector["run"]), "--n", "10", "--steps", "1", "--features",  # noqa: E731
                         "inception", "--inception-weights", str(run_and_detector["detector"]), "--cache-dir", str(c),
                         "--device", "cpu", "--no-progress", "--json", str(j)]
    assert main(args(cache, first)) == 0
    cached = list((cache / "reference").glob("*.npz"))
    assert len(cached) == 1
    for damage in (cached[0].read_bytes()[:100], b"not an npz"):
        cached[0].write_bytes(damage)
        capsys.readouterr()
        again = tmp_path / "again.json"
        assert main(args(cache, again)) == 0
        assert "damaged; computing them again" in capsys.readouterr().err
        assert json.loads(again.read_text())["fid"] == json.loads(first.read_text())["fid"]


def test_reference_features_pass_over_an_unreadable_file(tmp_path, capsys):
    """An image folder's unreadable file is passed over (and counted) in the FID reference, as encode does."""
    import numpy as np
    from PIL import Image

    from ilct.data.folder import load_image_folder
    from ilct.metrics.evaluate import dataset_features

    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    data = load_image_folder(tmp_path, 8)
    feats = dataset_features(lambda images: images.reshape(len(images), -1)[:, :2].astype(np.float64), data,
                             batch_size=2, progress=False)
    assert len(data) == 4 and feats.shape == (3, 2) and sorted(feats[:, 0]) == [0, 40, 80]
    assert "1 unreadable reference file(s) passed over" in capsys.readouterr().err
