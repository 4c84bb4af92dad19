"""Image folders: every Pillow mode decoded to uint8 RGB with its real range (golden pixels), unreadable files
skipped and counted where they are read (or refused with --strict), the pixel limit, and `ilct encode` never
leaving a half-written latent directory (a full disk, a signal)."""

from __future__ import annotations

import errno
import signal
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import module_dir
from ilct.cli import main
from ilct.data.folder import MAX_PIXELS, load_image_folder, read_image, to_rgb
from ilct.data.images import to_float
from ilct.latents import LatentDir
from ilct.latents.directory import partial_dir

# ---------------------------------------------------------------- PNG surgery


def png_chunks(raw: bytes) -> list[tuple[bytes, bytes]]:
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    out, pos = [], 8
    while pos < len(raw):
        (n,) = struct.unpack(">I", raw[pos : pos + 4])
        out.append((raw[pos + 4 : pos + 8], raw[pos + 8 : pos + 8 + n]))
        pos += 12 + n
    return out


def png_bytes(chunks: list[tuple[bytes, bytes]]) -> bytes:
    """A PNG of these chunks, each with its CRC computed (so Image.verify() accepts it)."""
    body = b"".join(struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in chunks)
    return b"\x89PNG\r\n\x1a\n" + body


def write_corrupt_png(path: Path) -> Path:
    """A PNG whose chunks and CRCs are right but whose IDAT holds a truncated zlib stream."""
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path)
    chunks = png_chunks(path.read_bytes())
    idat = b"".join(d for t, d in chunks if t == b"IDAT")
    first = next(k for k, (t, _) in enumerate(chunks) if t == b"IDAT")
    rest = [c for c in chunks if c[0] != b"IDAT"]
    path.write_bytes(png_bytes(rest[:first] + [(b"IDAT", idat[: len(idat) // 2])] + rest[first:]))
    return path


def write_bomb_png(path: Path, width: int, height: int) -> Path:
    """A tiny file whose header claims width x height 8-bit grey pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(png_bytes([(b"IHDR", ihdr), (b"IDAT", zlib.compress(bytes(64))), (b"IEND", b"")]))
    return path


def write_good(folder: Path, n: int = 3) -> list[np.ndarray]:
    """n 16x16 RGB PNGs a.png, b.png, ... (sorted before anything named later in the alphabet)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(n)]
    for k, a in enumerate(images):
        Image.fromarray(a).save(folder / f"{'abcdefgh'[k]}.png")
    return images


@pytest.fixture(scope="module")
def rgb_autoencoder(request, tmp_path_factory) -> Path:
    """A built-in KL autoencoder for RGB images (random weights, seeded): 16x16 images -> 4x4x4 latents."""
    from ilct.training.accel import flush_denormals
    from ilct.autoencoders.kl import KLAutoencoder, KLAutoencoderConfig

    flush_denormals()  # before this process's first torch work, as `ilct` does (else a later train warns)
    torch.manual_seed(0)
    out = module_dir(request, tmp_path_factory, "rgb_ae") / "ae"
    KLAutoencoder(KLAutoencoderConfig(image_channels=3)).save(out)
    return out


def encode(capsys, folder: Path, out: Path, ae: Path, *extra: str) -> tuple[int, str, str]:
    rc = main(["encode", "--data", f"image_folder:{folder}", "--resolution", "16", "--autoencoder", f"builtin:{ae}",
               "--out", str(out), "--device", "cpu", "--no-progress", *extra])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if ".tmp" in p.name)


# ---------------------------------------------------------------- modes: golden pixels


def grey(im: Image.Image) -> np.ndarray:
    """The one channel of an RGB image whose three channels are equal."""
    a = np.asarray(im)
    assert a.dtype == np.uint8 and a.shape[-1] == 3
    assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    return a[..., 0]


def test_16_bit_grey_png_keeps_its_range(tmp_path):
    values = np.array([[0, 128, 129, 1000], [25700, 32896, 65279, 65535]], np.uint16)  # 0..65535 -> x / 257
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"
    assert grey(read_image(tmp_path / "g16.png")).tolist() == [[0, 0, 1, 4], [100, 128, 254, 255]]


def test_32_bit_modes_i_and_f():
    i32 = Image.fromarray(np.array([[-5, 514, 65535, 70000]], np.int32))  # "I": 16-bit data, clipped
    assert i32.mode == "I" and grey(to_rgb(i32)).tolist() == [[0, 2, 255, 255]]
    f32 = Image.fromarray(np.array([[-1.0, 0.0, 0.2, 1.0, 2.0]], np.float32))  # "F": 0..1, clipped
    assert f32.mode == "F" and grey(to_rgb(f32)).tolist() == [[0, 0, 51, 255, 255]]


def test_alpha_is_composited_on_white(tmp_path):
    la = np.array([[[0, 128], [200, 128], [50, 0], [10, 255]]], np.uint8)  # c a / 255 + 255 (1 - a / 255)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert grey(read_image(tmp_path / "la.png")).tolist() == [[127, 227, 255, 10]]
    rgba = np.array([[[0, 0, 255, 51], [255, 0, 0, 255]]], np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.asarray(read_image(tmp_path / "rgba.png")).tolist() == [[[204, 204, 255], [255, 0, 0]]]


def test_palette_with_transparency_and_mode_1(tmp_path):
    p = Image.new("P", (3, 1))
    p.putpalette([255, 0, 0, 0, 0, 255, 0, 255, 0])
    p.putdata([0, 1, 2])
    p.save(tmp_path / "p.png", transparency=1)  # entry 1 (blue) is transparent: white
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert np.asarray(read_image(tmp_path / "p.png")).tolist() == [[[255, 0, 0], [255, 255, 255], [0, 255, 0]]]
    Image.fromarray(np.array([[0, 1, 1, 0]], bool)).save(tmp_path / "one.png")
    assert Image.open(tmp_path / "one.png").mode == "1"
    assert grey(read_image(tmp_path / "one.png")).tolist() == [[0, 255, 255, 0]]


def test_cmyk_jpeg(tmp_path):
    cmyk = Image.new("CMYK", (16, 8))
    cmyk.paste((0, 255, 255, 0), (0, 0, 8, 8))  # red
    cmyk.paste((0, 0, 0, 128), (8, 0, 16, 8))  # 50 % black: grey 127
    cmyk.save(tmp_path / "c.jpg", quality=100)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    a = np.asarray(read_image(tmp_path / "c.jpg")).astype(int)
    assert np.abs(a[2:6, 2:6] - [255, 0, 0]).max() <= 3 and np.abs(a[2:6, 10:14] - 127).max() <= 3


def test_folder_reads_every_mode_through_the_same_path(tmp_path):
    """At the folder's own size (no resampling) the batch holds exactly the golden pixels."""
    folder = tmp_path / "modes"
    folder.mkdir()
    Image.fromarray(np.full((4, 4), 25700, np.uint16)).save(folder / "a_g16.png")
    Image.fromarray(np.dstack([np.full((4, 4), 200, np.uint8), np.full((4, 4), 128, np.uint8)]), "LA").save(
        folder / "b_la.png")
    ds = load_image_folder(folder, 4)
    images, ok, bad = ds.read_at(np.arange(2))
    assert ok.all() and not bad and images.dtype == np.uint8 and images.shape == (2, 4, 4, 3)
    assert (images[0] == 100).all() and (images[1] == 227).all()


# ---------------------------------------------------------------- unreadable files


def test_corrupt_png_passes_verify_and_is_skipped_at_read_time(tmp_path, capsys, rgb_autoencoder):
    folder = tmp_path / "imgs"
    good = write_good(folder)
    bad = write_corrupt_png(folder / "z_corrupt.png")
    with Image.open(bad) as im:
        im.verify()  # the chunks and CRCs are right: only decoding finds the damage
    out = tmp_path / "lat"
    rc, stdout, err = encode(capsys, folder, out, rgb_autoencoder, "--flip")
    assert rc == 0, err
    assert f"skipped 1 unreadable file(s): first: {bad} (" in stdout  # once, though flip reads it twice
    lat = LatentDir(out)
    assert lat.count == 6 and lat.meta["sources"] == 8 and len(lat.meta["shards"][0]["skipped"]) == 2
    from ilct.autoencoders import load_autoencoder

    ae = load_autoencoder("builtin", str(rgb_autoencoder))
    x = to_float(np.stack(good))
    with torch.no_grad():
        want = torch.cat([ae.encode(x), ae.encode(x.flip(-1))])
    torch.testing.assert_close(lat.all(), want, atol=1e-5, rtol=1e-5)
    # a finished directory: the same command reports the same skip and changes nothing
    before = (out / "shard_00000.npy").stat().st_mtime_ns
    rc, stdout, _ = encode(capsys, folder, out, rgb_autoencoder, "--flip")
    assert rc == 0 and "skipped 1 unreadable file(s)" in stdout
    assert (out / "shard_00000.npy").stat().st_mtime_ns == before


def test_strict_refuses_the_corrupt_file_and_writes_no_latent_dir(tmp_path, capsys, rgb_autoencoder):
    folder = tmp_path / "imgs"
    write_good(folder)
    bad = write_corrupt_png(folder / "z_corrupt.png")
    out = tmp_path / "lat"
    rc, stdout, err = encode(capsys, folder, out, rgb_autoencoder, "--strict", "--shard-size", "2",
                             "--batch-size", "1")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("ilct: error: unreadable image ") and str(bad) in err and "--strict" in err
    assert not out.exists() and not leftovers(tmp_path)
    # an existing empty --out stays as it was too
    out.mkdir()
    rc, _, _ = encode(capsys, folder, out, rgb_autoencoder, "--strict")
    assert rc == 2 and list(out.iterdir()) == []


def test_all_files_unreadable_is_one_line_and_leaves_nothing(tmp_path, capsys, rgb_autoencoder):
    folder = tmp_path / "bad"
    folder.mkdir()
    for k in range(3):
        (folder / f"{k}.jpg").write_bytes(b"nope")
    out = tmp_path / "lat"
    rc, _, err = encode(capsys, folder, out, rgb_autoencoder)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "no readable images" in err and "all 3 file(s) unreadable" in err and "0.jpg" in err
    assert not out.exists() and not partial_dir(out).exists()


# ---------------------------------------------------------------- the pixel limit


def test_a_decompression_bomb_is_refused_without_a_warning(tmp_path, capsys, rgb_autoencoder):
    folder = tmp_path / "imgs"
    write_good(folder, 2)
    bomb = write_bomb_png(folder / "z_bomb.png", 10_000, 10_000)  # 1e8 pixels: above Pillow's warning threshold
    out = tmp_path / "lat"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, stdout, err = encode(capsys, folder, out, rgb_autoencoder, "--max-pixels", "50000000")
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert rc == 0 and "DecompressionBomb" not in err + stdout
    assert f"skipped 1 unreadable file(s): first: {bomb} (10000x10000 = 100,000,000 pixels, more than the limit " \
           "of 50,000,000 (--max-pixels))" in stdout
    assert LatentDir(out).count == 2
    # --strict: one line naming it; Pillow's own global limit is back as it was
    rc, _, err = encode(capsys, folder, tmp_path / "strict", rgb_autoencoder, "--max-pixels", "50000000", "--strict")
    assert rc == 2 and len(err.strip().splitlines()) == 1 and str(bomb) in err and "100,000,000 pixels" in err
    assert Image.MAX_IMAGE_PIXELS == MAX_PIXELS // 2


def test_default_pixel_limit_refuses_a_huge_header(tmp_path, capsys, rgb_autoencoder):
    folder = tmp_path / "imgs"
    folder.mkdir()
    write_bomb_png(folder / "bomb.png", 30_000, 30_000)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc, stdout, err = encode(capsys, folder, tmp_path / "lat", rgb_autoencoder)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert "30000x30000 = 900,000,000 pixels, more than the limit of 178,956,970" in err
    rc, _, err = encode(capsys, folder, tmp_path / "lat", rgb_autoencoder, "--max-pixels", "0")
    assert rc == 2 and "--max-pixels" in err
    rc = main(["encode", "--data", "fashion_mnist", "--autoencoder", f"builtin:{rgb_autoencoder}",
               "--out", str(tmp_path / "fm"), "--max-pixels", "10", "--no-progress"])
    assert rc == 2 and "--max-pixels applies to image_folder" in capsys.readouterr().err


# ---------------------------------------------------------------- never a half-written latent directory


@pytest.mark.parametrize("failure", ["short write", "ENOSPC"])
def test_disk_full_is_one_line_and_leaves_no_temporary_shard(tmp_path, capsys, rgb_autoencoder, monkeypatch,
                                                             failure):
    folder = tmp_path / "imgs"
    write_good(folder, 4)
    out = tmp_path / "lat"
    real_save = np.save
    calls = []

    def full_disk(file, array, *args, **kwargs):
        calls.append(Path(file).name)
        if len(calls) <= 2:  # shard 0 and its labels are written
            return real_save(file, array, *args, **kwargs)
        Path(file).write_bytes(b"\x93NUMPY" + bytes(100))  # what a short write leaves
        if failure == "ENOSPC":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise OSError("1024000 requested and 222176 written")  # numpy's own words, without an errno

    monkeypatch.setattr(np, "save", full_disk)
    rc, _, err = encode(capsys, folder, out, rgb_autoencoder, "--shard-size", "2")
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "ilct: error: no space left on device while writing " in err and "shard_00001.npy" in err
    assert not out.exists() and not leftovers(tmp_path)
    work = partial_dir(out)
    assert sorted(p.name for p in work.iterdir()) == ["labels_00000.npy", "meta.json", "shard_00000.npy"]
    # space again: the same command resumes (shard 0 is kept) and renames the finished directory to --out
    monkeypatch.setattr(np, "save", real_save)
    before = (work / "shard_00000.npy").stat().st_mtime_ns
    rc, _, err = encode(capsys, folder, out, rgb_autoencoder, "--shard-size", "2")
    assert rc == 0, err
    assert LatentDir(out).count == 4 and not work.exists()
    assert (out / "shard_00000.npy").stat().st_mtime_ns == before


def test_a_signal_mid_encode_leaves_out_untouched(tmp_path, capsys, rgb_autoencoder, monkeypatch):
    from ilct.latents import directory
    from ilct.training.preempt import Interrupted

    folder = tmp_path / "imgs"
    write_good(folder, 4)
    out = tmp_path / "lat"
    real = directory.encode_batch
    batches = []

    def interrupted(ae, x, *args):
        batches.append(len(x))
        if len(batches) == 2:
            raise Interrupted(signal.SIGTERM)
        return real(ae, x, *args)

    monkeypatch.setattr(directory, "encode_batch", interrupted)
    rc, _, _ = encode(capsys, folder, out, rgb_autoencoder, "--shard-size", "2")
    assert rc == 128 + signal.SIGTERM and not out.exists() and not leftovers(tmp_path)
    monkeypatch.setattr(directory, "encode_batch", real)
    rc, _, err = encode(capsys, folder, out, rgb_autoencoder, "--shard-size", "2")
    assert rc == 0, err
    assert LatentDir(out).count == 4 and not partial_dir(out).exists()
