"""A latent directory read one shard at a time (`data.reader=stream`, ilct.training.stream).

Up front only meta.json, the statistics and captions.json (when there is one) are read; a shard's latents and
labels are read when the stream reaches them, each file checked as it is read (present, its dtype and shape, the
row count meta.json records, finite latents). So a node needs only meta.json, stats.safetensors and the shards
its ranks read (docs/streaming.md), and no node ever maps or copies the whole set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ilct.errors import IlctError
from ilct.latents.directory import STATS_FILE, LatentSet, LatentStats, read_captions, read_meta, shard_array


class LatentShards(LatentSet):
    """The shards of a finished latent directory, in the order `ilct encode` wrote them (shard k holds the
    latents starts[k] .. starts[k] + sizes[k] - 1)."""

    labels = None  # read per shard (`read`), never all at once

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta, self.shape, self.count, self.fingerprint, self.files = read_meta(self.path)
        try:  # rows per shard: "kept" (directories from before skipping at read time kept the whole range)
            self.sizes = [int(s["kept"]) if "kept" in s else int(s["stop"]) - int(s["start"]) for s in self.meta["shards"]]
        except (KeyError, TypeError, ValueError):
            raise IlctError(f"{self.path}: meta.json gives no row count for every shard") from None
        if any(n < 0 for n in self.sizes) or sum(self.sizes) != self.count:
            raise IlctError(f"{self.path}: the shards do not add up to the {self.count} latents meta.json names")
        self.starts = np.cumsum([0] + self.sizes)[:-1]  # (shards,) the first latent index of each shard
        self.stats = LatentStats.load(self.path / STATS_FILE)
        self.captions = read_captions(self.path, self.count)

    @property
    def nbytes(self) -> int:
        return self.count * int(np.prod(self.shape)) * 4

    def check_finite(self) -> None:
        """Nothing up front: each shard's latents are checked finite when they are read (`read`)."""

    def check(self, k: int) -> None:
        """Shard k's two files are there, whole (their headers and sizes; the data is not read)."""
        self._present(k)
        self._rows(shard_array(self.path, self.files[k][0], np.float32, self.shape), k)
        self._rows(shard_array(self.path, self.files[k][1], np.int64, ()), k)

    def read(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Shard k read whole into memory: latents float32 (n, *shape) and labels int64 (n,), checked."""
        self._present(k)
        latents = self._rows(shard_array(self.path, self.files[k][0], np.float32, self.shape, None), k)
        labels = self._rows(shard_array(self.path, self.files[k][1], np.int64, (), None), k)
        if not np.isfinite(latents).all():
            raise IlctError(f"{self.path / self.files[k][0]} holds latents that are not finite (NaN or inf)")
        return latents, labels

    def _present(self, k: int) -> None:
        for name in self.files[k]:
            if Path(name).name == name and not (self.path / name).is_file():
                raise IlctError(f"{self.path}: shard {name!r} is missing (a node needs meta.json, the statistics and "
                                "the shards of its ranks' draw groups: docs/streaming.md)")

    def _rows(self, a: np.ndarray, k: int) -> np.ndarray:
        if len(a) != self.sizes[k]:
            raise IlctError(f"{self.path}: shard {k} holds {len(a)} rows, meta.json records {self.sizes[k]}")
        return a
