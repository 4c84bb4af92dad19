"""The stream reader (`data.reader=stream`): latent shards read in a seeded order, a window at a time.

The global batch of step k is drawn in G = train.draw_groups groups of n = B / G samples (ilct.training.batches).
With the stream, draw group g owns the shards s with s mod G = g of the latent directory (`group_shards`), and
reads them as one endless sequence of passes (epochs) over its L_g samples:

    epoch e:  the group's shards in the order of a permutation seeded by (seed, e, g)        (`epoch_order`)
              cut into windows of W = data.stream_window consecutive shards; the samples of window j
              in the order of a permutation seeded by (seed, e, g, j)                          (`window_permutation`)
    step k:   group g's samples are positions k n .. k n + n - 1 of that sequence, epoch e = position // L_g

So every sample of the group's shards is seen once per epoch, the order is a function of (seed, G, W, the shards)
alone, and the reader's state after step k, (epoch, position) = divmod(k n, L_g) per group, is a function of k:
a run resumed at any step (mid-epoch included) reads exactly the samples the uninterrupted run read, at any world
size that divides G. A rank reads only its own groups' shards, one window (W shards) per group held in memory at a
time, each shard file read whole when its window is reached and checked as it is read (ilct.latents.shards).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ilct.errors import IlctError
from ilct.latents.shards import LatentShards

_STREAM = 0x5354524D  # "STRM": keeps these seeds apart from every other draw seeded by the run's seed


def _generator(*keys: int) -> torch.Generator:
    state = np.random.SeedSequence([_STREAM, *keys]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


def group_shards(n_shards: int, groups: int, group: int) -> list[int]:
    """The shards draw group `group` owns: s = group, group + G, group + 2G, ..."""
    return list(range(group, n_shards, groups))


def epoch_order(seed: int, epoch: int, group: int, shards: list[int]) -> list[int]:
    """The group's shards in the order it reads them in epoch `epoch`."""
    return [shards[i] for i in torch.randperm(len(shards), generator=_generator(seed, epoch, group)).tolist()]


def window_permutation(seed: int, epoch: int, group: int, window: int, size: int) -> np.ndarray:
    """The order in which the `size` samples of window `window` of the epoch are read (indices into the
    window's shards, concatenated in their epoch order)."""
    return torch.randperm(size, generator=_generator(seed, epoch, group, 1 + window)).numpy()


class StreamReader:
    """Each draw group's samples of a step, from its own shards in the seeded order (see the module)."""

    gather = None  # no random access: the batch maker takes whole groups (`take`)
    labels = None

    def __init__(self, shards: LatentShards, normalize: Callable[[torch.Tensor], torch.Tensor], seed: int,
                 groups: int, n: int, window: int, num_classes: int = 0, table: torch.Tensor | None = None,
                 keep: np.ndarray | None = None):
        self.shards, self.normalize, self.seed, self.groups, self.n, self.window = shards, normalize, seed, groups, n, window
        self.num_classes, self.table = num_classes, table  # table: caption conditions by latent index (text models)
        # keep (data.caption_holdout): a bool per latent, False for those never trained on; each shard's rows kept
        self.rows = None if keep is None else [np.flatnonzero(keep[a:a + m]) for a, m in zip(shards.starts, shards.sizes)]
        self.sizes = np.asarray(shards.sizes if self.rows is None else [len(r) for r in self.rows], dtype=np.int64)
        self.n_data = int(self.sizes.sum())
        self.length = [int(self.sizes[group_shards(len(self.sizes), groups, g)].sum()) for g in range(groups)]  # L_g
        self._plans: dict[int, tuple[int, list[list[int]], np.ndarray]] = {}  # group -> (epoch, windows, their ends)
        self._perms: dict[int, tuple[tuple[int, int], np.ndarray]] = {}  # group -> ((epoch, window), permutation)
        self._held: dict[int, tuple[tuple[int, int], list[tuple[np.ndarray, np.ndarray]]]] = {}  # group -> its window
        self.most_held = 0  # the most shards this reader ever held at once

    # ---- the order: pure functions of (seed, groups, window, the shards' sizes)

    def plan(self, epoch: int, group: int) -> tuple[list[list[int]], np.ndarray]:
        """The epoch's windows (shard ids) of the group, and the cumulative sample counts at their ends."""
        cached = self._plans.get(group)
        if cached is None or cached[0] != epoch:
            order = epoch_order(self.seed, epoch, group, group_shards(len(self.sizes), self.groups, group))
            windows = [order[i:i + self.window] for i in range(0, len(order), self.window)]
            cached = (epoch, windows, np.cumsum([int(self.sizes[w].sum()) for w in windows]))
            self._plans[group] = cached
        return cached[1], cached[2]

    def _perm(self, epoch: int, group: int, j: int, size: int) -> np.ndarray:
        cached = self._perms.get(group)
        if cached is None or cached[0] != (epoch, j):
            cached = ((epoch, j), window_permutation(self.seed, epoch, group, j, size))
            self._perms[group] = cached
        return cached[1]

    def segments(self, k: int, group: int, a: int, b: int):
        """(epoch, window j, its shard ids, shard of each sample within the window, row in that shard) for samples
        a .. b-1 of the group's n at step k (positions k n + a .. k n + b - 1; an epoch or window boundary
        splits them)."""
        pos, stop, length = k * self.n + a, k * self.n + b, self.length[group]
        while pos < stop:
            epoch, p = divmod(pos, length)
            windows, ends = self.plan(epoch, group)
            j = int(np.searchsorted(ends, p, side="right"))
            start = int(ends[j - 1]) if j else 0
            count = min(stop - pos, int(ends[j]) - p)
            rows = self._perm(epoch, group, j, int(ends[j]) - start)[p - start:p - start + count]
            shard_ends = np.cumsum(self.sizes[windows[j]])
            which = np.searchsorted(shard_ends, rows, side="right")  # (count,) the shard within the window
            row = rows - (shard_ends[which] - self.sizes[windows[j]][which])
            if self.rows is not None:  # the row-th kept row of its shard
                for w in np.unique(which):
                    row[which == w] = self.rows[windows[j][w]][row[which == w]]
            yield epoch, j, windows[j], which, row
            pos += count

    def indices(self, k: int, group: int, a: int, b: int) -> np.ndarray:
        """The latent indices (as `ilct encode` numbered them) of samples a .. b-1 of the group at step k."""
        parts = [self.shards.starts[np.asarray(ids)[which]] + row for _, _, ids, which, row in self.segments(k, group, a, b)]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def state(self, step: int) -> dict[str, Any]:
        """What a checkpoint records: each group's (epoch, position) after `step` steps."""
        return {"kind": "stream", "window": self.window,
                "groups": [list(divmod(step * self.n, length)) for length in self.length]}

    def resume(self, saved: dict[str, Any] | None, step: int) -> None:
        """A resumed run goes on from the position its checkpoint recorded; they differ only when the shards did."""
        if saved is not None and saved != self.state(step):
            raise IlctError(f"--resume: the checkpoint of step {step} recorded the stream at (epoch, position) "
                            f"{saved.get('groups') if isinstance(saved, dict) else saved} per draw group; these latents put it at {self.state(step)['groups']}: "
                            f"{self.shards.path} holds other shards than the run read (give it those, or start a new run)")

    # ---- the data: read a window at a time

    def _window(self, epoch: int, group: int, j: int, ids: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Window j's shards (latents, labels), read whole; the group's previous window is let go first."""
        held = self._held.pop(group, None)
        if held is not None and held[0] == (epoch, j):
            self._held[group] = held
            return held[1]
        del held  # released before the next window is read: at most `window` shards per group in memory
        others = sum(len(h[1]) for h in self._held.values())
        arrays = []
        for s in ids:
            latents, labels = self.shards.read(s)
            if self.num_classes > 0 and len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise IlctError(f"{self.shards.path / self.shards.files[s][1]}: labels outside 0..{self.num_classes - 1} "
                                f"(model.num_classes={self.num_classes})")
            arrays.append((latents, labels))
            self.most_held = max(self.most_held, others + len(arrays))
        self._held[group] = ((epoch, j), arrays)
        return arrays

    def take(self, k: int, group: int, n: int, g: torch.Generator, a: int, b: int):
        """Samples a .. b-1 of the group's n at step k: normalized latents and their conditions (class labels from
        the shards' label files, or caption conditions by latent index). The generator g is not used."""
        xs, ys, idx = [], [], []
        for epoch, j, ids, which, row in self.segments(k, group, a, b):
            arrays = self._window(epoch, group, j, ids)
            x = np.empty((len(row), *self.shards.shape), np.float32)
            y = np.empty(len(row), np.int64)
            for s in np.unique(which):
                sel = which == s
                x[sel], y[sel] = arrays[s][0][row[sel]], arrays[s][1][row[sel]]
            xs.append(x)
            ys.append(y)
            idx.append(self.shards.starts[np.asarray(ids)[which]] + row)
        x = self.normalize(torch.from_numpy(np.concatenate(xs)))
        if self.table is not None:
            return x, self.table[torch.from_numpy(np.concatenate(idx))]
        return x, (torch.from_numpy(np.concatenate(ys)) if self.num_classes > 0 else None)


def open_stream(shards: LatentShards, normalize: Callable[[torch.Tensor], torch.Tensor], seed: int, groups: int,
                n: int, window: int, mine: range, num_classes: int = 0, table: torch.Tensor | None = None,
                keep: np.ndarray | None = None) -> StreamReader:
    """The stream, after checking that every draw group has shards and that this rank's groups' shard files are
    all there and whole (their headers; the data is checked as it is read)."""
    if len(shards.sizes) < groups:
        raise IlctError(f"data.reader=stream: {shards.path} holds {len(shards.sizes)} shard(s), fewer than the {groups} "
                        "draw groups (train.draw_groups; every group reads shards of its own): encode with a smaller "
                        "--shard-size")
    reader = StreamReader(shards, normalize, seed, groups, n, window, num_classes, table, keep)
    for g in mine:
        if reader.length[g] == 0:
            raise IlctError(f"data.reader=stream: draw group {g}'s shards of {shards.path} hold no latents to train on")
        for s in group_shards(len(shards.sizes), groups, g):
            shards.check(s)
    return reader
