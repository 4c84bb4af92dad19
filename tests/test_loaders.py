"""Config and file loaders as a hostile user meets them (issue 34, item 6): YAML configs, --set values, the
autoencoder's config.json, checkpoints' state.json and every JSON file ilct reads are checked field by field;
a duplicate key, an alias, deep nesting, a huge file, a wrong type or an absurd value is one IlctError line
naming the field (through the CLI: exit 2, one stderr line, no traceback).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import module_dir
from ilct.autoencoders import load_autoencoder
from ilct.autoencoders.kl import KLAutoencoder
from ilct.runs.checkpoint import read_state
from ilct.cli import main
from ilct.config import MAX_YAML_BYTES, load_config
from ilct.data.video_folder import read_captions
from ilct.errors import IlctError
from ilct.io.files import read_json
from ilct.metrics.monitor import read_best


def one_line_error(call) -> str:
    """The message of the IlctError `call()` raises, checked to be one line."""
    with pytest.raises(IlctError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


# --------------------------------------------------------------------------- YAML config files

LAUGHS = "".join(f"l{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]\n" for i in range(1, 9))

YAML_CASES = [
    ("duplicate key", "train:\n  lr: 1.0e-4\n  lr: 2.0e-4\n", r"line 3: not valid YAML \(the key 'lr' is given twice\)"),
    ("duplicate section", "train: {lr: 1.0e-4}\ntrain: {batch_size: 2}\n", r"the key 'train' is given twice"),
    ("alias", "train: {lr: &x 1.0e-4}\nconsistency: {c_scale: *x}\n", r"aliases \(\*name\) are not allowed"),
    ("billion laughs", "l0: &a0 [x, x, x, x, x, x, x, x, x]\n" + LAUGHS + "data: {root: *a8}\n", r"aliases"),
    ("deep nesting", "data:\n  root: " + "[" * 5000 + "]" * 5000 + "\n", r"nested deeper than 8 levels"),
    ("python tag", "train: !!python/object/apply:os.system ['true']\n", r"could not determine a constructor"),
    ("bare string", "hello\n", r"expected a mapping of sections, got str$"),
    ("top-level list", "- train\n- model\n", r"expected a mapping of sections, got list$"),
    ("integer too long", "train:\n  seed: " + "9" * 5000 + "\n", r"not valid YAML \(Exceeds the limit"),
    ("base not a name", "base: [1, 2]\n", r"base must be a preset name or a path to a \.yaml file, got \[1, 2\]"),
    ("lone surrogate", 'data: {root: "\\ud800"}\n', r"data\.root holds a lone surrogate"),
    ("NUL in a path", 'data: {root: "a\\0b"}\n', r"data\.root must not hold a NUL character"),
    ("section not a mapping", "train: 5\n", r"section 'train' must be a mapping, got 5$"),
]


@pytest.mark.parametrize("text,pattern", [c[1:] for c in YAML_CASES], ids=[c[0] for c in YAML_CASES])
def test_pathological_yaml_is_one_line(tmp_path, text, pattern):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert re.search(pattern, one_line_error(lambda: load_config(str(path))))


def test_a_config_over_the_size_cap_is_refused_unread(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text("train: {lr: 1.0e-4}\n" + "#" * MAX_YAML_BYTES + "\n")
    assert re.search(r"huge\.yaml: [\d,]+ bytes, more than the 1,048,576 a config file may have",
                     one_line_error(lambda: load_config(str(path))))


def test_a_relative_base_is_taken_from_the_files_folder(tmp_path, monkeypatch):
    """base: parent.yaml means the parent.yaml beside the file, whatever the current folder holds."""
    (tmp_path / "cfgs").mkdir()
    (tmp_path / "cfgs" / "parent.yaml").write_text(yaml.safe_dump({"base": "fmnist-ict", "train": {"seed": 11}}))
    (tmp_path / "cfgs" / "child.yaml").write_text(yaml.safe_dump({"base": "parent.yaml", "train": {"batch_size": 16}}))
    (tmp_path / "parent.yaml").write_text(yaml.safe_dump({"base": "fmnist-ict", "train": {"seed": 99}}))  # a decoy
    monkeypatch.chdir(tmp_path)
    cfg = load_config("cfgs/child.yaml")
    assert (cfg.train.seed, cfg.train.batch_size, cfg.model.arch) == (11, 16, "ADM-T")
    (tmp_path / "cfgs" / "loop.yaml").write_text("base: ./loop.yaml\n")  # the same file by another name
    assert "circular 'base:' chain" in one_line_error(lambda: load_config("cfgs/loop.yaml"))


# --------------------------------------------------------------------------- ranges of --set values

RANGE_CASES = [
    ("model.num_classes=-2", "model.num_classes"),
    ("model.num_classes=10000000", "model.num_classes"),
    ("model.text_dim=-1", "model.text_dim"),
    ("model.text_dim=1000000", "model.text_dim"),
    ("model.text_tokens=-1", "model.text_tokens"),
    ("model.in_channels=-1", "model.in_channels"),
    ("model.in_channels=100000", "model.in_channels"),
    ("model.input_size=0", "model.input_size"),
    ("model.input_size=1000000", "model.input_size"),
    ("model.frames=-1", "model.frames"),
    ("data.resolution=1000000", "data.resolution"),
    ("data.frames=0", "data.frames"),
    ("consistency.s0=0", "consistency.s0"),
    ("consistency.s1=1000000000", "consistency.s1"),
    ("method.lambda_diff=1e9", "method.lambda_diff"),
    ("train.weight_decay=1e6", "train.weight_decay"),
    ("train.adam_eps=5.0", "train.adam_eps"),
    ("train.grad_clip=1e300", "train.grad_clip"),
    ("train.warmup_steps=10000000000", "train.warmup_steps"),
    ("train.log_every=0", "train.log_every"),
    ("train.ckpt_every=10000000000", "train.ckpt_every"),
    ("train.sample_every=-1", "train.sample_every"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints"),
    ("train.num_sample_images=1000000", "train.num_sample_images"),
    ("train.max_nonfinite=0", "train.max_nonfinite"),
    ("train.fid_every=-1", "train.fid_every"),
    ("train.seed=1e300", "train.seed"),
    ("train.lr=" + "1" * 400, "train.lr"),
    ("data.caption_holdout=(", "data.caption_holdout"),
]


@pytest.mark.parametrize("override,field", RANGE_CASES, ids=[c[0][:40] for c in RANGE_CASES])
def test_absurd_values_are_refused_naming_the_field(override, field):
    msg = one_line_error(lambda: load_config("fmnist-ilct", [override]))
    assert msg.startswith(f"config: {field} "), msg


def test_num_classes_minus_one_still_means_from_the_data():
    assert load_config("fmnist-ilct", ["model.num_classes=-1"]).model.num_classes == -1


# --------------------------------------------------------------------------- the autoencoder's config.json


@pytest.fixture(scope="module")
def ae_dir(request, tmp_path_factory) -> Path:
    out = module_dir(request, tmp_path_factory, "loaders") / "ae"
    KLAutoencoder().save(out, extra={"metrics": {"psnr": 20.0}})
    return out


def _edit_config(src: Path, dst: Path, change) -> Path:
    dst.mkdir()
    (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    meta = json.loads((src / "config.json").read_text())
    (dst / "config.json").write_text(change(meta) if callable(change) else change)
    return dst


def _field(name, value):
    def change(meta):
        meta["config"][name] = value
        return json.dumps(meta)
    return change


AE_CASES = [
    ("latent_channels -1", _field("latent_channels", -1), r"config\.latent_channels must be an integer in 1\.\.1024, got -1$"),
    ("latent_channels '4'", _field("latent_channels", "4"), r"config\.latent_channels .* got '4'$"),
    ("latent_channels 4.5", _field("latent_channels", 4.5), r"config\.latent_channels .* got 4\.5$"),
    ("latent_channels null", _field("latent_channels", None), r"config\.latent_channels .* got None$"),
    ("latent_channels 1e9", _field("latent_channels", 10**9), r"config\.latent_channels .* got 1000000000$"),
    ("latent_channels true", _field("latent_channels", True), r"config\.latent_channels .* got True$"),
    ("image_channels 0", _field("image_channels", 0), r"config\.image_channels must be an integer in 1\.\.16"),
    ("channels not multiples of 8", _field("channels", [16, 33, 64]), r"config\.channels must be a list"),
    ("channels empty", _field("channels", []), r"config\.channels must be a list"),
    ("channels a string", _field("channels", "16,32"), r"config\.channels must be a list"),
    ("kl_weight negative", _field("kl_weight", -1.0), r"config\.kl_weight must be a number in \[0, 1\]"),
    ("kl_weight a string", _field("kl_weight", "1e-6"), r"config\.kl_weight must be a number"),
    ("unknown field", _field("depth", 3), r"config must hold exactly .*; unknown 'depth'$"),
    ("another kind", lambda m: json.dumps({**m, "kind": "taesd"}), r"kind must be 'builtin', got 'taesd'"),
    ("a list", "[1, 2]", r"is not a built-in autoencoder config"),
    ("duplicate key", '{"kind": "builtin", "kind": "builtin", "config": {}}', r"the key 'kind' is given twice"),
    ("deep nesting", "[" * 100000 + "]" * 100000, r"nested too deeply$"),
    ("channels that do not fit the weights", _field("channels", [16, 32, 64, 128]),
     r"model\.safetensors does not match .*config\.json: "),
]


@pytest.mark.parametrize("change,pattern", [c[1:] for c in AE_CASES], ids=[c[0] for c in AE_CASES])
def test_autoencoder_config_json_is_checked_field_by_field(ae_dir, tmp_path, change, pattern):
    bad = _edit_config(ae_dir, tmp_path / "ae", change)
    msg = one_line_error(lambda: load_autoencoder("builtin", str(bad)))
    assert str(bad) in msg and re.search(pattern, msg), msg


def test_the_unedited_autoencoder_loads(ae_dir, tmp_path):
    good = _edit_config(ae_dir, tmp_path / "ae", lambda m: json.dumps(m))
    assert load_autoencoder("builtin", str(good)).latent_channels == 4


# --------------------------------------------------------------------------- checkpoints' state.json

GOOD_STATE = {"step": 12, "nonfinite_total": 0, "lr_halved": False, "arch": "DiT-T/4", "world_size": 1,
              "rng": {"numpy": ["MT19937", 0, 0, 0.0], "python": [3, [1, 2], None]}, "replica_digests": ["ab12"]}

STATE_CASES = [
    ("step a string", {"step": "12"}, r"'step' must be an integer in 0\.\.999999999, got '12'$"),
    ("step a float", {"step": 12.0}, r"'step' must be an integer"),
    ("step 1e11", {"step": 10**11}, r"'step' must be an integer in 0\.\.999999999"),
    ("step of another folder", {"step": 8}, r"step 8 does not match the folder name step_000000012$"),
    ("nonfinite_total -3", {"nonfinite_total": -3}, r"'nonfinite_total' must be an integer in 0\.\."),
    ("world_size 0", {"world_size": 0}, r"'world_size' must be an integer in 1\.\."),
    ("world_size true", {"world_size": True}, r"'world_size' must be an integer"),
    ("lr_halved a string", {"lr_halved": "yes"}, r"'lr_halved' must be true or false, got 'yes'$"),
    ("arch a number", {"arch": 5}, r"'arch' must be a string"),
    ("arch huge", {"arch": "D" * 10000}, r"'arch' must be a string of 1\.\.200 characters"),
    ("rng a list", {"rng": []}, r"'rng' must be an object of lists"),
    ("replica_digests a string", {"replica_digests": "ab12"}, r"'replica_digests' must be a list"),
]


@pytest.mark.parametrize("change,pattern", [c[1:] for c in STATE_CASES], ids=[c[0] for c in STATE_CASES])
def test_state_json_is_checked_field_by_field(tmp_path, change, pattern):
    ckpt = tmp_path / "step_000000012"
    ckpt.mkdir()
    (ckpt / "state.json").write_text(json.dumps(GOOD_STATE))
    assert read_state(ckpt) == GOOD_STATE
    (ckpt / "state.json").write_text(json.dumps({**GOOD_STATE, **change}))
    msg = one_line_error(lambda: read_state(ckpt))
    assert msg.startswith(str(ckpt / "state.json")) and re.search(pattern, msg), msg


def test_state_json_with_a_duplicate_step_is_refused(tmp_path):
    ckpt = tmp_path / "step_000000012"
    ckpt.mkdir()
    (ckpt / "state.json").write_text('{"step": 12, "step": 12}')
    assert "the key 'step' is given twice" in one_line_error(lambda: read_state(ckpt))


# --------------------------------------------------------------------------- JSON files in general

JSON_CASES = [
    ("duplicate key", '{"a": 1, "a": 2}', r"the key 'a' is given twice in one object$"),
    ("nested duplicate key", '{"a": {"b": 1, "b": 1}}', r"the key 'b' is given twice"),
    ("lone surrogate", '["ok", "\\ud800"]', r"the string at \[1\] holds a lone surrogate"),
    ("lone surrogate key", '{"\\udfff": 1}', r"the string at \['\\udfff'\] \(the key\) holds a lone surrogate"),
    ("deep nesting", "[" * 100000 + "]" * 100000, r"nested too deeply$"),
    ("integer too long", "1" * 5000, r"Exceeds the limit"),
    ("truncated", '{"a": ', r"Expecting value"),
]


@pytest.mark.parametrize("text,pattern", [c[1:] for c in JSON_CASES], ids=[c[0] for c in JSON_CASES])
def test_json_files_are_refused_with_one_line(tmp_path, text, pattern):
    path = tmp_path / "f.json"
    path.write_text(text)
    msg = one_line_error(lambda: read_json(path))
    assert msg.startswith(f"cannot read {path}: ") and re.search(pattern, msg), msg


def test_a_surrogate_pair_is_text(tmp_path):
    path = tmp_path / "f.json"
    path.write_text('["\\ud83d\\ude00"]')
    assert read_json(path) == ["\U0001F600"]


CAPTION_CASES = [
    ("duplicate video", '{"a.mkv": "x", "b.mkv": "y", "a.mkv": "z"}', r"the key 'a\.mkv' is given twice"),
    ("lone surrogate", '{"a.mkv": "x", "b.mkv": "caf\\udce9"}', r"the string at \['b\.mkv'\] holds a lone surrogate"),
]


@pytest.mark.parametrize("text,pattern", [c[1:] for c in CAPTION_CASES], ids=[c[0] for c in CAPTION_CASES])
def test_video_captions_json_is_refused_at_load(tmp_path, text, pattern):
    path = tmp_path / "captions.json"
    path.write_text(text)
    msg = one_line_error(lambda: read_captions(path, ["a.mkv", "b.mkv"]))
    assert str(path) in msg and re.search(pattern, msg), msg


@pytest.mark.parametrize("text", ['{"step": 4, "step": 8, "fid": 1.0}', '{"step": true, "fid": 1.0}',
                                  '{"step": 4.5, "fid": 1.0}', '{"step": 4, "fid": "1"}', '{"step": 4, "fid": -1}'])
def test_a_damaged_best_json_is_no_best(tmp_path, text):
    """best.json is a note of the run's own: damaged, it names no best step (the next measurement writes it)."""
    (tmp_path / "best.json").write_text('{"step": 4, "fid": 1.5}')
    assert read_best(tmp_path) is not None
    (tmp_path / "best.json").write_text(text)
    assert read_best(tmp_path) is None


# --------------------------------------------------------------------------- through the CLI


def cli_error(err: str) -> str:
    """The one line `ilct: error: ...` of a failed command's stderr (a once-a-process warning of torch's
    threads, printed when an earlier test trained in this process, aside), with no traceback."""
    lines = [x for x in err.splitlines() if not x.startswith("ilct: warning:")]
    assert len(lines) == 1 and lines[0].startswith("ilct: error: ") and "Traceback" not in err, err
    return lines[0]

CLI_CASES = [
    ("duplicate key", "train:\n  lr: 1.0e-4\n  lr: 2.0e-4\n", [], "the key 'lr' is given twice"),
    ("alias", "train: {lr: &x 1.0e-4}\nconsistency: {c_scale: *x}\n", [], "aliases"),
    ("bare string", "just words\n", [], "expected a mapping of sections, got str"),
    ("num_classes -2", "base: fmnist-ilct\n", ["--set", "model.num_classes=-2"], "config: model.num_classes must be"),
]


@pytest.mark.parametrize("text,extra,needle", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_exits_2_with_one_line(tmp_path, capsys, fake_fmnist, text, extra, needle):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    rc = main(["train", "--config", str(cfg), "--data-dir", str(fake_fmnist), "--out", str(tmp_path / "run"),
               "--no-progress", *extra])
    err = cli_error(capsys.readouterr().err)
    assert rc == 2 and needle in err, err
    assert not (tmp_path / "run").exists()


def test_cli_refuses_a_damaged_autoencoder_config(ae_dir, tmp_path, capsys, fake_fmnist):
    bad = _edit_config(ae_dir, tmp_path / "ae", _field("latent_channels", "4"))
    rc = main(["train", "--config", "fmnist-ilct", "--autoencoder", str(bad), "--data-dir", str(fake_fmnist),
               "--out", str(tmp_path / "run"), "--no-progress", "--set", f"data.cache_dir={tmp_path / 'cache'}"])
    err = cli_error(capsys.readouterr().err)
    assert rc == 2 and f"{bad / 'config.json'}: config.latent_channels must be an integer" in err
