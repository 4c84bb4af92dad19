"""Sample files: .npz under 'images' and the ADM evaluator's 'arr_0'; grids as lossless PNG, never JPEG."""

import numpy as np
import pytest
from PIL import Image

from ilct.io.grid import make_grid, save_npz, save_png


def test_npz_holds_the_exact_uint8_samples_under_images_and_arr_0(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    save_npz(images, tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as f:
        assert sorted(f.files) == ["arr_0", "images"]
        for key in ("arr_0", "images"):
            assert f[key].dtype == np.uint8 and np.array_equal(f[key], images)
    with pytest.raises(ValueError, match="uint8"):
        save_npz(images.astype(np.float32), tmp_path / "f.npz")


def test_grids_are_lossless_png_whatever_the_name(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (4, 6, 6, 1), dtype=np.uint8)
    grid = make_grid(images)
    for name in ("g.png", "g.jpg"):
        save_png(grid, tmp_path / name)
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and np.array_equal(np.asarray(im), grid[..., 0])  # bit-exact round trip
