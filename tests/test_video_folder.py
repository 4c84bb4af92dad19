"""video_folder: users' own clips decoded with PyAV, captions from captions.json, one-line errors for bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from ilct.data import load_dataset
from ilct.data.clips import ClipFrames
from ilct.data.video_folder import VideoFolder
from ilct.errors import IlctError

av = pytest.importorskip("av")


def write_video(path: Path, frames: np.ndarray, codec: str = "ffv1", pix_fmt: str = "bgr0") -> Path:
    """uint8 (T, H, W, 3) frames encoded at 8 fps (ffv1 is lossless; libx264 with yuv420p is not)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=8)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    return path


def moving_bar(t: int = 12, h: int = 24, w: int = 32, seed: int = 0, x0: int = 0, noise: bool = True) -> np.ndarray:
    """A red bar moving right from column x0 (on noise, or on grey), the frame number in pixel (0, 0)."""
    frames = np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)
    if not noise:
        frames[:] = 128
    for k in range(t):
        frames[k, :, x0 + 2 * k : x0 + 2 * k + 6] = (255, 0, 0)
        frames[k, 0, 0] = 20 * k
    return frames


def error_of(root: Path, **kwargs) -> str:
    with pytest.raises(IlctError) as e:
        VideoFolder(root, kwargs.pop("resolution", 16), **kwargs)
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def test_frames_are_taken_stride_apart_centre_cropped_exactly(tmp_path):
    frames = moving_bar()
    write_video(tmp_path / "v" / "a.mkv", frames)
    ds = VideoFolder(tmp_path / "v", 24, frames=4, frame_stride=3)
    assert len(ds) == 1 and ds.shape == (3, 4, 24, 24) and ds.captions is None and ds.labels.tolist() == [-1]
    clips = ds.clips_at(np.array([0]))
    assert clips.dtype == np.uint8 and clips.shape == (1, 4, 24, 24, 3)
    assert np.array_equal(clips[0], frames[0:10:3, :, 4:28])  # frames 0, 3, 6, 9; the centre 24 of 32 columns
    x = ds.batch_indices(np.array([0]))
    assert tuple(x.shape) == (1, 3, 4, 24, 24)
    frames_ds = ClipFrames(ds)
    assert len(frames_ds) == 4 and np.array_equal(frames_ds.images_at(np.array([2])), clips[0, 2:3])


def test_h264_videos_with_captions_in_subfolders(tmp_path):
    root = tmp_path / "v"
    bar = moving_bar(10, 32, 48, x0=10, noise=False)  # in the centre 32 columns
    write_video(root / "b.mp4", bar, "libx264", "yuv420p")
    write_video(root / "sub" / "a.mkv", moving_bar(10, 32, 32, seed=1))
    (root / "notes.txt").write_text("not a video")
    (root / "captions.json").write_text(json.dumps({"sub/a.mkv": "noise  with a bar", "b.mp4": "a red bar moving right"}))
    ds = load_dataset("video_folder", str(root), resolution=16, frames=5, frame_stride=2)
    assert [p.relative_to(root).as_posix() for p in ds.files] == ["b.mp4", "sub/a.mkv"]
    assert ds.captions == ["a red bar moving right", "noise with a bar"]
    clips = ds.clips_at(np.arange(2))
    assert clips.shape == (2, 5, 16, 16, 3)
    red = clips[0, ..., 0].astype(int) - clips[0, ..., 1]  # where the bar is
    cols = [np.argmax(r.mean(axis=0)) for r in red]
    assert all(b > a for a, b in zip(cols, cols[1:]))  # the bar moves right (lossy codec: positions only)


def test_bad_folders_are_one_line_errors(tmp_path, monkeypatch):
    assert "video folder not found" in error_of(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "captions.json").write_text("{}")
    assert re.match(r"no video files in .*empty", error_of(tmp_path / "empty"))

    bad = tmp_path / "corrupt"
    write_video(bad / "good.mkv", moving_bar())
    (bad / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    assert re.match(r"cannot decode video .*bad\.mp4: ", error_of(bad))

    cut = tmp_path / "truncated"
    data = write_video(tmp_path / "whole.mp4", moving_bar(), "libx264", "yuv420p").read_bytes()
    cut.mkdir()
    (cut / "cut.mp4").write_bytes(data[: len(data) // 3])
    assert re.search(r"cut\.mp4", error_of(cut))

    short = tmp_path / "short"
    write_video(short / "a.mkv", moving_bar(6))
    VideoFolder(short, 16, frames=3, frame_stride=2)  # needs frames 0, 2, 4: fits
    msg = error_of(short, frames=4, frame_stride=2)  # needs 7
    assert msg.endswith("a.mkv has 6 frame(s), fewer than the 7 that 4 frames 2 apart need "
                        "(lower data.frames or data.frame_stride)")

    monkeypatch.setitem(__import__("sys").modules, "av", None)  # PyAV not installed
    assert "pip install 'ilct[video]'" in error_of(short)


@pytest.mark.parametrize("content,pattern", [
    (json.dumps({"a.mkv": "x"}), r"captions\.json has no caption for 1 video\(s\): 'b\.mkv'$"),
    (json.dumps({"a.mkv": "x", "b.mkv": "y", "c.mkv": "z"}), r"names 1 file\(s\) that are not videos in .*: 'c\.mkv'$"),
    (json.dumps({"a.mkv": "x", "b.mkv": 3}), r"the caption of 1 video\(s\) is not a non-empty string: 'b\.mkv'$"),
    (json.dumps({"a.mkv": "x", "b.mkv": "  "}), r"not a non-empty string: 'b\.mkv'$"),
    (json.dumps(["a.mkv", "b.mkv"]), r"expected a JSON object mapping video names to captions, got list$"),
    ('{"a.mkv": "x",\n "b.mkv": }', r"cannot read .*captions\.json: Expecting value: line 2"),
    (b'{"a.mkv": "caf\xe9", "b.mkv": "y"}', r"cannot read .*captions\.json: not UTF-8 text \(byte 14\)$"),
])
def test_caption_files_that_do_not_fit_are_one_line_errors(tmp_path, content, pattern):
    for name in ("a.mkv", "b.mkv"):
        write_video(tmp_path / name, moving_bar(3))
    path = tmp_path / "captions.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert re.search(pattern, error_of(tmp_path, frames=2))


def test_ilct_clips_reads_a_video_folder_and_exits_2_on_a_corrupt_video(tmp_path, capsys):
    from ilct.cli import main

    root = tmp_path / "v"
    write_video(root / "a.mkv", moving_bar())
    (root / "captions.json").write_text('{"a.mkv": "a red bar"}')
    out = tmp_path / "out"
    assert main(["clips", "--data", f"video_folder:{root}", "--out", str(out), "--frames", "3"]) == 0
    assert (out / "video_folder.txt").read_text() == "a red bar\n" and (out / "video_folder.gif").is_file()
    assert main(["clips", "--data", f"video_folder:{root}", "--out", str(root)]) == 2  # never writes into the data
    assert "lies inside" in capsys.readouterr().err
    (root / "b.mp4").write_bytes(b"not a video")
    assert main(["clips", "--data", f"video_folder:{root}", "--out", str(out)]) == 2
    assert "has no caption for 1 video(s): 'b.mp4'" in capsys.readouterr().err  # the captions are checked first
    (root / "captions.json").unlink()
    assert main(["clips", "--data", f"video_folder:{root}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ilct: error: cannot decode video ") and "b.mp4" in err and err.count("\n") == 1
