"""A folder of the user's own video files as clips, decoded with PyAV (`pip install 'ilct[video]'`).

Every file under the folder (recursive) with a video extension (.mp4, .m4v,
.mov, .mkv, .webm, .avi, .gif) is one clip: its first `frames` frames taken
`frame_stride` apart (frames 0, s, 2s, ..., (T-1)s of the first video stream),
each centre-cropped and resized to `resolution` as ilct.data.folder does for
images (ADM's recipe), RGB. Labels and motions are -1.

Captions (optional): a UTF-8 JSON file `captions.json` at the top of the
folder mapping each video's path relative to the folder, with forward slashes,
to its caption:

    {"cat.mp4": "a cat jumping onto a sofa", "street/night.mov": "cars passing at night"}

It must name every video and nothing else; without it the clips are uncaptioned.

Every file is opened and decoded up to its last needed frame when the folder
is opened, so a bad folder fails at once with one line (IlctError): no video
files, a file that cannot be decoded, a video shorter than (frames - 1) *
frame_stride + 1 frames, or a caption file that is not UTF-8, not JSON, not a
mapping of names to non-empty texts, or whose names do not match the videos.
Clips are decoded again on demand, so a large folder is never held in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ilct.data.clips import ClipDataset, check_clip_size
from ilct.data.folder import center_crop_resize
from ilct.errors import IlctError
from ilct.io.files import read_json

EXTENSIONS = {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".gif"}
CAPTIONS = "captions.json"
INSTALL_HINT = "pip install 'ilct[video]'"


def _av():
    try:  # optional: pip install 'ilct[video]'
        import av
    except ImportError:
        raise IlctError(f"the video_folder dataset needs PyAV: {INSTALL_HINT}") from None
    return av


def _names(names: list[str], most: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def read_frames(path: Path, frames: int, frame_stride: int) -> list[Image.Image]:
    """Frames 0, s, ..., (frames - 1) s of the first video stream as RGB images; IlctError when the
    file cannot be decoded or is too short."""
    av = _av()
    need = (frames - 1) * frame_stride + 1
    kept: list[Image.Image] = []
    seen = 0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise IlctError(f"{path}: no video stream")
            for frame in container.decode(container.streams.video[0]):
                if seen % frame_stride == 0:
                    kept.append(frame.to_image().convert("RGB"))
                seen += 1
                if seen == need:
                    break
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as e:
        reason = getattr(e, "strerror", None) or " ".join(str(e).split()) or type(e).__name__
        raise IlctError(f"cannot decode video {path}: {reason}") from None
    if seen < need:
        raise IlctError(f"{path} has {seen} frame(s), fewer than the {need} that {frames} frames "
                        f"{frame_stride} apart need (lower data.frames or data.frame_stride)")
    return kept


def read_captions(path: Path, videos: list[str]) -> list[str]:
    """The captions of `videos` (relative names) from a captions.json; IlctError when it does not fit."""
    table = read_json(path)  # IlctError when missing, not UTF-8 or not JSON
    if not isinstance(table, dict):
        raise IlctError(f"{path}: expected a JSON object mapping video names to captions, got {type(table).__name__}")
    missing = [v for v in videos if v not in table]
    if missing:
        raise IlctError(f"{path} has no caption for {len(missing)} video(s): {_names(missing)}")
    extra = sorted(set(table) - set(videos))
    if extra:
        raise IlctError(f"{path} names {len(extra)} file(s) that are not videos in {path.parent}: {_names(extra)}")
    bad = [v for v in videos if not isinstance(table[v], str) or not table[v].strip()]
    if bad:
        raise IlctError(f"{path}: the caption of {len(bad)} video(s) is not a non-empty string: {_names(bad)}")
    return [" ".join(table[v].split()) for v in videos]


class VideoFolder(ClipDataset):
    def __init__(self, root: str | Path, resolution: int, frames: int = 8, frame_stride: int = 1):
        check_clip_size(frames, frame_stride)
        root_path = Path(root) if root else None
        if root_path is None or not root_path.is_dir():
            raise IlctError(f"video folder not found: {root or '(empty path)'}")
        self.files = sorted(p for p in root_path.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file())
        if not self.files:
            raise IlctError(f"no video files in {root_path} (extensions: {', '.join(sorted(EXTENSIONS))})")
        rel = [p.relative_to(root_path).as_posix() for p in self.files]
        caption_file = root_path / CAPTIONS
        self.captions = read_captions(caption_file, rel) if caption_file.exists() else None
        for f in self.files:
            read_frames(f, frames, frame_stride)
        self.resolution, self.frames, self.frame_stride = resolution, frames, frame_stride
        self.labels = np.full(len(self.files), -1, np.int64)
        self.motions = np.full(len(self.files), -1, np.int64)
        self.shape = (3, frames, resolution, resolution)
        self.name = f"video_folder:{root_path.resolve()}@{resolution}x{frames}s{frame_stride}"

    def clips_at(self, idx: np.ndarray) -> np.ndarray:
        idx = np.asarray(idx).reshape(-1)
        out = np.empty((len(idx), self.frames, self.resolution, self.resolution, 3), np.uint8)
        for row, i in enumerate(idx):
            for f, im in enumerate(read_frames(self.files[i], self.frames, self.frame_stride)):
                out[row, f] = center_crop_resize(im, self.resolution)
        return out


def load_video_folder(root: str | Path, resolution: int, frames: int = 8, frame_stride: int = 1) -> VideoFolder:
    return VideoFolder(root, resolution, frames, frame_stride)
