"""Procedural captioned clips (moving Fashion-MNIST, emoji clips), the clip interface, and the GIF / strip writers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ilct.io.animation import clip_strip, grid_frames, save_clip_strip, save_gif
from ilct.config import Config, from_dict
from ilct.data import CLIP_DATASETS, ArrayClips, ClipFrames, load_dataset
from ilct.data.clips import DIRECTIONS, bounce, net_starts
from ilct.data.emoji_clips import MOTIONS, EmojiClips, heldout_motion
from ilct.data.moving_fmnist import HELDOUT, NAMES, MovingFashionMNIST, heldout_pairs
from ilct.errors import IlctError
from ilct.io.grid import save_npz

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")
FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")


def garments(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fake 28x28 garments: a solid block with a notch, class c for image c % 10."""
    rng = np.random.default_rng(seed)
    g = np.zeros((n, 28, 28), np.uint8)
    g[:, 6:22, 6:22] = rng.integers(100, 255, (n, 1, 1))
    g[:, 6:10, 12:16] = 0
    return g, np.arange(n) % 10


def centre_of_mass(frame: np.ndarray) -> np.ndarray:
    """(x, y) of the brightness of one (H, W) frame."""
    w = frame.astype(np.float64)
    ys, xs = np.indices(w.shape)
    return np.array([(w * xs).sum(), (w * ys).sum()]) / w.sum()


# --------------------------------------------------------------------------- motion


def test_bounce_is_a_triangle_wave():
    assert bounce(np.arange(-3, 12), 4).tolist() == [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1, 0, 1, 2, 3]
    assert bounce(np.array([5, -5]), 0).tolist() == [0, 0]


def test_net_starts_end_further_along_and_start_that_way():
    for sign in (-1, 1):
        for step in (1, 2, 3, 5):
            starts = net_starts(sign, step, 8, 16)
            assert len(starts)
            for s in starts:
                end = bounce(s + sign * step * 7, 16)
                assert np.sign(end - s) == sign and np.sign(bounce(s + sign * step, 16) - s) == sign


# --------------------------------------------------------------------------- moving Fashion-MNIST


def test_moving_fmnist_is_deterministic_per_seed_and_shaped():
    g, y = garments()
    a = MovingFashionMNIST(g, y, "train", 32, frames=8, count=50, seed=3)
    b = MovingFashionMNIST(g, y, "train", 32, frames=8, count=50, seed=3)
    c = MovingFashionMNIST(g, y, "train", 32, frames=8, count=50, seed=4)
    idx = np.arange(50)
    clips = a.clips_at(idx)
    assert clips.dtype == np.uint8 and clips.shape == (50, 8, 32, 32, 1) and a.shape == (1, 8, 32, 32)
    assert np.array_equal(clips, b.clips_at(idx)) and a.captions == b.captions
    assert not np.array_equal(clips, c.clips_at(idx))
    assert np.array_equal(a.clips_at(np.array([7, 2])), clips[[7, 2]])  # a clip does not depend on its batch
    x = a.batch_indices(np.array([0, 1]))
    assert x.shape == (2, 1, 8, 32, 32) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert np.allclose(((x[0, 0, 3].numpy() + 1) * 127.5), clips[0, 3, ..., 0], atol=1e-4)
    rgb = MovingFashionMNIST(g, y, "train", 32, count=5, seed=3, rgb=True).clips_at(np.arange(5))  # a prefix
    assert rgb.shape == (5, 8, 32, 32, 3) and np.array_equal(rgb[..., 1], clips[:5, ..., 0])


def test_moving_fmnist_captions_match_the_motion_of_the_garment():
    """The caption's direction is that of the first step and of the whole clip; the garment moves only
    along that axis, at the drawn speed, and turns back only where it touches the canvas edge."""
    g, y = garments()
    res, size, frames = 32, 16, 12
    ds = MovingFashionMNIST(g, y, "train", res, frames=frames, count=80, seed=1)
    clips = ds.clips_at(np.arange(80))[..., 0]
    bounced = 0
    for i, clip in enumerate(clips):
        m = re.fullmatch(r"an? (.+) moving (left|right|up|down)", ds.captions[i])
        assert m and NAMES.index(m.group(1)) == ds.labels[i] == y[i % len(g)]
        direction = m.group(2)
        assert DIRECTIONS[ds.motions[i]] == direction
        com = np.stack([centre_of_mass(f) for f in clip])  # (T, 2)
        axis = 0 if direction in ("left", "right") else 1
        sign = -1 if direction in ("left", "up") else 1
        steps = np.diff(com[:, axis])
        assert np.allclose(com[:, 1 - axis], com[0, 1 - axis])  # no motion across
        assert np.sign(steps[0]) == sign and np.sign(com[-1, axis] - com[0, axis]) == sign
        assert (np.abs(steps) <= ds.speed[i, 0] + 1e-6).all() and np.isclose(np.abs(steps[0]), ds.speed[i, 0])
        sprite = np.asarray(Image.fromarray(g[ds.image[i, 0]]).resize((size, size), Image.BICUBIC))
        inner = np.flatnonzero(sprite.max(axis=axis))  # the garment's lit extent inside its box along the axis
        for k in np.flatnonzero(np.sign(steps[1:]) != np.sign(steps[:-1])):  # a turn back at frame k + 1
            bounced += 1
            lit = np.flatnonzero(clip[k + 1].max(axis=axis))
            box = lit.min() - inner.min()  # the box's first pixel; the box stays in 0..res - size
            assert box < ds.speed[i, 0] or box > res - size - ds.speed[i, 0]  # it turned at an edge
    assert bounced > 0  # 12 frames at up to 3 px on 16 free pixels: some clips bounce


def test_held_out_pairs_never_train_and_are_all_that_heldout_shows():
    g, y = garments(60)
    assert heldout_pairs() == [(c, HELDOUT[c]) for c in range(10)] and len(set(HELDOUT)) == 4
    held = {f"{'an' if NAMES[c][0] in 'aeiou' else 'a'} {NAMES[c]} moving {d}" for c, d in heldout_pairs()}
    for split in ("train", "test"):
        ds = MovingFashionMNIST(g, y, split, 32, count=600, objects=2, seed=0)
        pairs = {(int(c), DIRECTIONS[d]) for c, d in zip(ds.object_labels.ravel(), ds.object_motions.ravel())}
        assert not pairs & set(heldout_pairs()) and len(pairs) == 30  # every other pair is shown
        assert not any(p in cap for cap in ds.captions for p in held)
    ho = MovingFashionMNIST(g, y, "heldout", 32, count=100, objects=2, seed=0)
    assert {(int(c), DIRECTIONS[d]) for c, d in zip(ho.object_labels.ravel(), ho.object_motions.ravel())} <= set(heldout_pairs())
    assert all(" and " in cap and all(p in held for p in cap.split(" and ")) for cap in ho.captions)


def test_frame_stride_shows_every_sth_frame_of_the_motion():
    g, y = garments()
    one = MovingFashionMNIST(g, y, "train", 48, frames=4, frame_stride=1, count=20, seed=0)
    two = MovingFashionMNIST(g, y, "train", 48, frames=4, frame_stride=2, count=20, seed=0)
    for i in range(20):
        step1 = np.abs(np.diff(one.positions(i, 0), axis=0)).sum(axis=1)
        step2 = np.abs(np.diff(two.positions(i, 0), axis=0)).sum(axis=1)
        assert (step1 <= one.speed[i, 0]).all() and (step2 <= 2 * two.speed[i, 0]).all()
        assert step2.max() == 2 * two.speed[i, 0]


def test_moving_fmnist_on_the_real_files():
    if not (REAL_FMNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("dataset-fashion-mnist is not installed")
    ds = load_dataset("moving_fmnist", str(REAL_FMNIST), "heldout", 32, frames=6)
    assert len(ds) == 10_000 and ds.shape == (1, 6, 32, 32)
    assert all(DIRECTIONS[m] == HELDOUT[c] for c, m in zip(ds.labels, ds.motions))
    clips = ds.clips_at(np.arange(4))
    assert clips.shape == (4, 6, 32, 32, 1) and clips.max() > 100


# --------------------------------------------------------------------------- emoji clips


def glyphs(n: int = 6) -> tuple[np.ndarray, list[str]]:
    """Fake glyphs on white: a black bar from the centre to the right edge (an arrow's shaft)."""
    g = np.full((n, 32, 32, 3), 255, np.uint8)
    g[:, 14:18, 16:32] = 0
    return g, [f"glyph {k}" for k in range(n)]


def ink(frame: np.ndarray) -> np.ndarray:
    return 255 - frame.astype(np.float64).mean(axis=-1)


def test_emoji_clips_captions_match_their_motion():
    g, names = glyphs()
    ds = EmojiClips(g, names, "train", 32, frames=6, count=120, seed=0)
    clips = ds.clips_at(np.arange(len(ds)))
    assert clips.shape == (120, 6, 32, 32, 3) and ds.shape == (3, 6, 32, 32)
    assert sorted(set(ds.motions.tolist())) != [] and len(set(ds.motions.tolist())) >= 6
    for i, clip in enumerate(clips):
        name, motion = names[ds.labels[i]], MOTIONS[ds.motions[i]]
        assert ds.captions[i] == f"{name} {motion}"
        mass = [ink(f) for f in clip]
        if motion.startswith("sliding"):
            com = np.stack([centre_of_mass(m) for m in mass])
            axis = 0 if motion.endswith(("left", "right")) else 1
            sign = -1 if motion.endswith(("left", "up")) else 1
            assert np.sign(com[1, axis] - com[0, axis]) == sign and np.sign(com[-1, axis] - com[0, axis]) == sign
        elif motion.startswith("zooming"):
            area = np.array([m.sum() for m in mass])
            assert (np.sign(np.diff(area)) == (1 if motion.endswith("in") else -1)).all()
        else:  # the shaft points right in frame 0, then turns; clockwise on screen is a falling angle (y up)
            angles = []
            for m in mass:
                x, y = centre_of_mass(m) - 15.5
                angles.append(np.degrees(np.arctan2(-y, x)))
            turn = np.diff(np.unwrap(np.radians(angles)))
            assert (np.sign(turn) == (-1 if motion.endswith(" clockwise") else 1)).all()


def test_emoji_clips_deterministic_and_held_out_by_name():
    g, _ = glyphs(8)
    names = ["cat", "dog", "cat", "fish", "sun", "moon", "dog", "tree"]  # two glyphs share each of two names
    a = EmojiClips(g, names, "train", 16, frames=3, count=400, seed=5)
    b = EmojiClips(g, names, "train", 16, frames=3, count=400, seed=5)
    assert a.captions == b.captions and np.array_equal(a.clips_at(np.arange(40)), b.clips_at(np.arange(40)))
    prefix = EmojiClips(g, names, "train", 16, frames=3, count=40, seed=5)  # clip i does not depend on the count
    assert prefix.captions == a.captions[:40] and np.array_equal(prefix.clips_at(np.arange(40)), a.clips_at(np.arange(40)))
    held = {f"{n} {MOTIONS[heldout_motion(n)]}" for n in names}
    for split in ("train", "test"):
        ds = EmojiClips(g, names, split, 16, frames=3, count=400, seed=5)
        assert not held & set(ds.captions) and len(set(ds.captions)) == 6 * 7
    assert set(EmojiClips(g, names, "heldout", 16, frames=3, count=50).captions) == held
    assert heldout_motion("cat") == heldout_motion("cat") == 2656977832 % 8  # zlib.crc32(b"cat"), stable across runs


def test_emoji_clips_on_the_real_font():
    if not FONT.is_file():
        pytest.skip("fonts-noto-color-emoji is not installed")
    pytest.importorskip("fontTools")
    ds = load_dataset("emoji_clips", str(FONT), "train", 16, frames=4, frame_stride=2)
    assert len(ds) > 3000 and ds.shape == (3, 4, 16, 16)
    clips = ds.clips_at(np.arange(3))
    assert clips.shape == (3, 4, 16, 16, 3) and (clips < 200).any()
    assert ds.captions[0].endswith(MOTIONS[ds.motions[0]])


# --------------------------------------------------------------------------- interface, config


def test_clip_frames_expose_every_frame_as_an_image():
    clips = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 6, 3), dtype=np.uint8)
    ds = ArrayClips(clips, np.array([2, 0, 1]), "x", captions=["a", "b", "c"])
    frames = ClipFrames(ds)
    assert len(frames) == 12 and frames.shape == (3, 5, 6) and frames.labels.tolist() == [2] * 4 + [0] * 4 + [1] * 4
    assert frames.captions[5] == "b"
    idx = np.array([11, 0, 5, 6])
    assert np.array_equal(frames.images_at(idx), clips.reshape(12, 5, 6, 3)[idx])
    with pytest.raises(ValueError, match="uint8"):
        ArrayClips(clips[0], np.zeros(4), "bad")


def test_config_takes_clip_datasets_and_checks_frames():
    cfg = from_dict({"data": {"dataset": "moving_fmnist", "frames": 16, "frame_stride": 2, "split": "heldout"}})
    assert (cfg.data.frames, cfg.data.frame_stride) == (16, 2) and Config().data.frames == 8
    assert set(CLIP_DATASETS) <= set(__import__("ilct.config").config.CHOICES["data.dataset"])
    bad = [({"dataset": "moving_fmnist", "frames": 0}, "data.frames must be in 1..1024, got 0"),
           ({"dataset": "video_folder", "frame_stride": 2000}, "data.frame_stride must be in 1..1024"),
           ({"dataset": "fashion_mnist", "frames": 4}, "data.frames and data.frame_stride apply to clip datasets"),
           ({"dataset": "video_folder", "split": "heldout"}, "heldout applies to moving_fmnist and emoji_clips"),
           ({"dataset": "movies"}, "data.dataset must be one of")]
    for data, msg in bad:
        with pytest.raises(IlctError, match=re.escape(msg)) as e:
            from_dict({"data": data})
        assert "\n" not in str(e.value)


def test_bad_clip_settings_are_one_line_errors():
    g, y = garments()
    for kwargs, msg in [({"split": "val"}, "unknown moving_fmnist split 'val'"), ({"frames": 0}, "frames must be >= 1"),
                        ({"object_size": 32}, "object size 32"), ({"objects": 3}, "objects must be 1 or 2")]:
        with pytest.raises(IlctError, match=re.escape(msg)):
            MovingFashionMNIST(g, y, **kwargs)


# --------------------------------------------------------------------------- writers


def test_gif_round_trips_frames_size_durations_and_exact_pixels(tmp_path):
    rng = np.random.default_rng(0)
    palette = np.array([[0, 0, 0], [255, 255, 255], [200, 30, 40], [10, 120, 250]], np.uint8)
    clip = palette[rng.integers(0, 4, (5, 6, 7))]  # (T=5, 6, 7, 3), few colours: GIF keeps them exactly
    save_gif(clip, tmp_path / "c.gif", duration=[40, 50, 60, 70, 80])
    with Image.open(tmp_path / "c.gif") as im:
        assert im.format == "GIF" and im.n_frames == 5 and im.size == (7, 6) and im.info.get("loop") == 0
        for k in range(5):
            im.seek(k)
            assert im.info["duration"] == 40 + 10 * k
            assert np.array_equal(np.asarray(im.convert("RGB")), clip[k])
    gray = rng.integers(0, 256, (3, 4, 4, 1), dtype=np.uint8)  # 48 values of 256 grey levels: exact
    save_gif(gray, tmp_path / "g.gif", scale=2)
    with Image.open(tmp_path / "g.gif") as im:
        assert im.n_frames == 3 and im.size == (8, 8)
        for k in range(3):
            im.seek(k)
            assert np.array_equal(np.asarray(im.convert("L"))[::2, ::2], gray[k, ..., 0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.gif", "g.gif"]  # no temporary left behind
    with pytest.raises(ValueError, match="one per frame"):
        save_gif(gray, tmp_path / "x.gif", duration=[10, 20])
    with pytest.raises(ValueError, match="uint8"):
        save_gif(gray[0], tmp_path / "x.gif")


def test_strip_rows_are_clips_and_columns_frames(tmp_path):
    clips = np.zeros((2, 3, 4, 4, 1), np.uint8)
    for n in range(2):
        for t in range(3):
            clips[n, t] = 10 * n + t + 1
    strip = clip_strip(clips, pad=1)
    assert strip.shape == (2 * 5 + 1, 3 * 5 + 1, 1)
    assert strip[1 + 5 * 1, 1 + 5 * 2, 0] == 13 and strip[1, 1 + 5, 0] == 2  # row = clip, column = frame
    save_clip_strip(clips, tmp_path / "s.png", pad=1)
    with Image.open(tmp_path / "s.png") as im:
        assert im.format == "PNG" and np.array_equal(np.asarray(im), strip[..., 0])
    frames = grid_frames(clips, cols=2, pad=1)
    assert frames.shape == (3, 6, 11, 1) and frames[2, 1, 1 + 5, 0] == 13
    save_npz(clips, tmp_path / "c.npz")
    with np.load(tmp_path / "c.npz") as f:
        assert np.array_equal(f["images"], clips)


# --------------------------------------------------------------------------- command line


def test_ilct_clips_renders_a_strip_a_gif_and_the_captions(tmp_path, fake_fmnist, capsys):
    from ilct.cli import main

    out = tmp_path / "out"
    assert main(["clips", "--data", f"moving_fmnist:{fake_fmnist}", "--out", str(out), "--split", "heldout",
                 "--n", "3", "--frames", "5", "--scale", "1"]) == 0
    caps = (out / "moving_fmnist.txt").read_text().splitlines()
    assert len(caps) == 3 and all(re.fullmatch(r"an? .+ moving (left|right|up|down)", c) for c in caps)
    with Image.open(out / "moving_fmnist.png") as im:
        assert im.size == (5 * 34 + 2, 3 * 34 + 2)  # rows = clips, columns = frames, 2 px padding
    with Image.open(out / "moving_fmnist.gif") as im:
        assert im.n_frames == 5
    for argv, msg in [(["--data", "fashion_mnist"], "--data expects one of moving_fmnist, emoji_clips, video_folder"),
                      (["--data", f"video_folder:{tmp_path / 'none'}"], "video folder not found"),
                      (["--data", "moving_fmnist", "--frames", "0"], "--frames must lie in 1..1,024, got 0")]:
        capsys.readouterr()
        assert main(["clips", "--out", str(out), *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("ilct: error: ") and msg in err and err.count("\n") == 1



def test_a_run_loads_clip_datasets_with_their_frames(fake_fmnist):
    """Training on clips is wired (tests/test_video_train.py); the run's data are the config's clips."""
    from ilct.training.data import load_dataset as run_dataset

    cfg = from_dict({"data": {"dataset": "moving_fmnist", "root": str(fake_fmnist), "frames": 3, "frame_stride": 2}})
    data = run_dataset(cfg)
    assert data.shape == (1, 3, 32, 32) and data.frame_stride == 2
