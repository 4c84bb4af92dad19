"""Encoded datasets on disk (latent directories), their statistics, and the latent cache.

    LATENT_DIR/meta.json            autoencoder fingerprint, dataset name, sources (images, x2 with
                                    flip), count (latents), shape, shards (each with the files it
                                    skipped as unreadable and why), posterior (mean, or one seeded
                                    sample per image)
    LATENT_DIR/shard_00000.npy      raw latents, float32 (n, C, H, W), or (n, C, T, H, W) for clips
                                    (T latent frames), memory-mappable
    LATENT_DIR/labels_00000.npy     int64 (n,)
    LATENT_DIR/stats.safetensors    per-element mean m and std s (C, H, W), or (C, T, H, W): every
                                    frame position has its own statistics, as every pixel position has
    LATENT_DIR/captions.json        one caption per latent, where the dataset has captions (emoji, clips)

Clips (ilct.data.clips, data.shape = (C, T, H, W)) go through an autoencoder that takes clips:
`for_clips(ae)`, any image autoencoder frame by frame (fingerprint `frames-...`) or a video VAE as it is;
their latents are `ae.clip_latent_shape(H, T)`.

Encoding streams the images through the encoder one batch at a time, writes a
shard at a time (atomically), and resumes by skipping finished shards. A new
directory is written into a hidden sibling (`.NAME.partial`) and renamed to
NAME when finished, so a failed encode (a full disk, a signal, --strict) never
leaves a half-written NAME; running it again resumes. A file that cannot be
decoded is skipped where it is read (its latent index, path and reason are
recorded), so a shard may hold fewer latents than its range of images. Each
latent is the posterior mean of a KL autoencoder (`posterior="mean"`, and what
a deterministic encoder such as TAESD gives), or one draw mean + std * eps of
its posterior (`posterior="sample"`), eps for latent j drawn from its own
generator seeded by (seed, j): the same latents whatever the batch size or a resume. The
statistics are accumulated in float64 from the shards.

Normalization (METHOD.md section 3, authors' code): x = sigma_d (latent - m) / s, the data x the model
trains on (METHOD.md writes z for it there and for the noise; in ilct, z is only the noise).
The latent cache used by `ilct train` is a latent directory under
`$ILCT_CACHE/latents/<key>`, the key naming the autoencoder and the dataset.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors import safe_open
from tqdm import tqdm

from ilct.autoencoders.base import Autoencoder
from ilct.autoencoders.frames import for_clips
from ilct.data.clips import ClipDataset
from ilct.data.images import ImageDataset, Unreadable, to_float
from ilct.errors import IlctError
from ilct.io.files import read_json, read_tensors, save_tensors, write_text
from ilct.seeds import sample_seed

META_FILE = "meta.json"
STATS_FILE = "stats.safetensors"
CAPTIONS_FILE = "captions.json"
FORMAT = "ilct-latents-1"
POSTERIORS = ("mean", "sample")


@dataclass
class LatentStats:
    mean: torch.Tensor  # (C, H, W) m; (C, T, H, W) for clips
    std: torch.Tensor  # (C, H, W) s; (C, T, H, W) for clips
    fingerprint: str = ""  # the autoencoder whose latent space these describe ("" = not recorded)
    latent_set: str = ""  # the latents they were computed from: "dataset|count" ("" = not recorded)

    def normalize(self, latent: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
        """x = sigma_d (latent - m) / s (normalized data, std sigma_d)."""
        return sigma_data * (latent - self.mean.to(latent.device)) / self.std.to(latent.device)

    def denormalize(self, x: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
        """latent = x s / sigma_d + m (the inverse of normalize)."""
        return x * self.std.to(x.device) / sigma_data + self.mean.to(x.device)

    @classmethod
    def of(cls, latents: torch.Tensor) -> "LatentStats":
        latents = latents.double()
        return cls(latents.mean(0).float(), latents.std(0).clamp_min(1e-6).float())

    def save(self, path: str | Path) -> None:
        meta = {k: v for k, v in (("autoencoder_fingerprint", self.fingerprint), ("latent_set", self.latent_set)) if v}
        save_tensors({"mean": self.mean, "std": self.std}, Path(path), metadata=meta or None)

    @classmethod
    def load(cls, path: str | Path) -> "LatentStats":
        """Checked: both tensors, one shape, float32, finite, s > 0."""
        t = read_tensors(path)
        if "mean" not in t or "std" not in t:
            raise IlctError(f"{path} holds no latent statistics")
        m, s = t["mean"], t["std"]
        if m.shape != s.shape or m.dim() < 1 or m.dtype != torch.float32 or s.dtype != torch.float32:
            raise IlctError(f"{path}: mean and std must be float32 tensors of one shape")
        if not (torch.isfinite(m).all() and torch.isfinite(s).all() and (s > 0).all()):
            raise IlctError(f"{path}: latent statistics must be finite with std > 0")
        meta = _stats_metadata(path)
        return cls(m, s, meta.get("autoencoder_fingerprint", ""), meta.get("latent_set", ""))


def _stats_metadata(path: str | Path) -> dict[str, str]:
    try:
        with safe_open(str(path), "pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # read_tensors already read the file; metadata is optional
        return {}


def is_complete(path: str | Path) -> bool:
    """Whether `path` holds a finished latent directory (an interrupted `ilct encode` leaves one that is not;
    running the same command again finishes it)."""
    try:
        meta = read_json(Path(path) / META_FILE)
    except IlctError:
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT and meta.get("complete") is True


def read_meta(path: Path) -> tuple[dict, tuple[int, ...], int, str, list[tuple[str, str]]]:
    """A finished latent directory's meta.json, checked: (meta, shape, count, autoencoder fingerprint,
    [(latent file, label file) per shard])."""
    meta_path = path / META_FILE
    if not meta_path.is_file():
        raise IlctError(f"{path} is not a latent directory (no {META_FILE}; make one with `ilct encode`)")
    meta = read_json(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise IlctError(f"{meta_path} is not an {FORMAT} latent directory")
    if not meta.get("complete"):
        raise IlctError(f"{path} is incomplete: run the same `ilct encode` again to finish it")
    try:
        shape = tuple(int(v) for v in meta["shape"])
        count = int(meta["count"])
        fingerprint = str(meta["autoencoder_fingerprint"])
        shards = [(str(s["file"]), str(s["labels"])) for s in meta["shards"]]
    except (KeyError, TypeError, ValueError):
        raise IlctError(f"{meta_path} is malformed (shape, count, fingerprint or shards)") from None
    return meta, shape, count, fingerprint, shards


def read_captions(path: Path, count: int) -> list[str] | None:
    """captions.json (one caption per latent), when the directory has one."""
    cap = path / CAPTIONS_FILE
    captions = read_json(cap) if cap.is_file() else None
    if captions is not None and (not isinstance(captions, list) or len(captions) != count
                                 or not all(isinstance(c, str) for c in captions)):
        raise IlctError(f"{cap} must hold one caption string per latent ({count})")
    return captions


def shard_array(folder: Path, name: str, dtype, shape: tuple, mmap_mode: str | None = "r") -> np.ndarray:
    """One shard file (memory-mapped, or read whole with mmap_mode None), checked against meta.json: present,
    inside the folder, readable, dtype and shape."""
    path = folder / name
    if Path(name).name != name or not path.is_file():
        raise IlctError(f"{folder}: shard {name!r} is missing (encode again into a new folder)")
    try:
        a = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise IlctError(f"cannot read {path}: {' '.join(str(e).split())}") from None
    if a.dtype != dtype or tuple(a.shape[1:]) != tuple(shape):
        raise IlctError(f"{path} holds {a.dtype} {tuple(a.shape)}, expected {np.dtype(dtype)} (n, {', '.join(map(str, shape))})")
    return a


class LatentSet:
    """What every reader of a finished latent directory shares: its `path`, `meta` (meta.json), `count` and
    autoencoder `fingerprint`."""

    path: Path
    meta: dict
    count: int
    fingerprint: str

    def __len__(self) -> int:
        return self.count

    @property
    def identity(self) -> str:
        """What the latents are of: "dataset|count" (recorded with a run's statistics)."""
        return f"{self.meta.get('dataset', '?')}|{self.count}"

    def check_autoencoder(self, ae: Autoencoder) -> None:
        if ae.fingerprint() != self.fingerprint:
            raise IlctError(
                f"{self.path} was encoded by another autoencoder ({self.meta.get('autoencoder', '?')}, "
                f"fingerprint {self.fingerprint}; this one is {ae.fingerprint()})"
            )


class LatentDir(LatentSet):
    """A finished latent directory, read by memory mapping."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta, self.shape, self.count, self.fingerprint, shards = read_meta(self.path)
        self.stats = LatentStats.load(self.path / STATS_FILE)
        self._shards = [shard_array(self.path, f, np.float32, self.shape) for f, _ in shards]
        labels = [shard_array(self.path, lf, np.int64, ()) for _, lf in shards]
        if any(len(a) != len(b) for a, b in zip(self._shards, labels)) or sum(map(len, self._shards)) != self.count:
            raise IlctError(f"{self.path}: the shards do not add up to the {self.count} latents meta.json names")
        self.labels = torch.from_numpy(np.concatenate(labels)) if labels else torch.zeros(0, dtype=torch.long)
        self._starts = np.cumsum([0] + [len(s) for s in self._shards])
        self.captions = read_captions(self.path, self.count)


    def gather(self, idx: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Raw latents at the given global indices (float32, (len(idx), *shape))."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), *self.shape), np.float32)
        shard = np.searchsorted(self._starts, idx, side="right") - 1
        for s in np.unique(shard):
            sel = shard == s
            out[sel] = self._shards[s][idx[sel] - self._starts[s]]
        return torch.from_numpy(out)

    @property
    def nbytes(self) -> int:
        return self.count * int(np.prod(self.shape)) * 4

    def all(self) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([np.asarray(s) for s in self._shards]))

    def check_finite(self) -> None:
        """Every latent is finite (NaN would poison the statistics, the OT coupling and the loss)."""
        for k, shard in enumerate(self._shards):
            for s in range(0, len(shard), 65536):
                if not np.isfinite(shard[s : s + 65536]).all():
                    raise IlctError(f"{self.path}: shard {k} holds latents that are not finite (NaN or inf)")



def posterior_noise(seed: int, indices: np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """eps ~ N(0, I), (len(indices), *shape); latent j's from a generator seeded by (seed, j)."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(sample_seed(seed, int(j))))
                        for j in indices])


def encode_batch(ae: Autoencoder, x: torch.Tensor, posterior: str, seed: int, indices: np.ndarray) -> torch.Tensor:
    """The latents of images (or clips) x: the posterior mean (encode), or mean + std * eps with eps seeded per latent index."""
    if posterior == "mean":
        return ae.encode(x)
    mean, std = ae.posterior_moments(x)
    return mean + std * posterior_noise(seed, indices, tuple(mean.shape[1:])).to(mean.device, mean.dtype)


def check_posterior(ae: Autoencoder, posterior: str, autoencoder_name: str) -> None:
    if posterior not in POSTERIORS:
        raise IlctError(f"posterior must be one of {', '.join(POSTERIORS)}, got {posterior!r}")
    if posterior == "sample" and not ae.has_posterior:
        raise IlctError(f"--posterior sample: {autoencoder_name or type(ae).__name__} has a deterministic encoder "
                        "(no posterior to sample, e.g. the TAESD family); use --posterior mean")


def _same_latents(old: dict, meta: dict) -> bool:
    """Whether a directory's meta.json describes the latents `meta` asks for (autoencoder, data, layout)."""
    old = {"posterior": "mean", "posterior_seed": None, **old}  # directories from before the posterior setting
    old.setdefault("sources", old.get("count"))  # directories from before skipping at read time
    core = ("file", "labels", "start", "stop")
    listed = old.get("shards") if isinstance(old.get("shards"), list) else []
    shards = [{k: s.get(k) for k in core} for s in listed if isinstance(s, dict)]
    return shards == [{k: s[k] for k in core} for s in meta["shards"]] and all(
        old.get(k) == meta[k] for k in ("format", "autoencoder_fingerprint", "dataset", "flip", "sources", "shape",
                                        "posterior", "posterior_seed"))


def _meta_at(folder: Path) -> dict | None:
    """A folder's meta.json as a dict; None when it has none; {} when it is not readable JSON."""
    path = folder / META_FILE
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (ValueError, OSError):
        return {}
    return meta if isinstance(meta, dict) else {}


def partial_dir(out: Path) -> Path:
    """Where a new latent directory is written before it is renamed to `out`: a hidden sibling."""
    out = out.resolve()
    return out.with_name(f".{out.name}.partial")


def _work_dir(out: Path, meta: dict) -> tuple[Path, dict | None]:
    """(the folder to encode into, its meta.json to resume from or None). A new encode goes into
    `partial_dir(out)` (resumed when it holds these latents, else started afresh); an incomplete
    directory of these latents at `out` itself (made before the partial folder) is resumed in place."""
    old = _meta_at(out)
    if old is not None:
        if not _same_latents(old, meta):
            raise IlctError(f"{out} already holds other latents ({old.get('autoencoder', '?')} on "
                            f"{old.get('dataset', '?')}); choose another --out")
        return out, old
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise IlctError(f"{out} exists and is not a latent directory; choose another --out")
    work = partial_dir(out)
    old = _meta_at(work)
    if old is not None and old.get("format") == FORMAT and _same_latents(old, meta):
        return work, old
    if work.exists():
        if old is None and (not work.is_dir() or any(work.iterdir())):
            raise IlctError(f"{work} is in the way of encoding into {out} and is not an unfinished encode; remove it")
        shutil.rmtree(work) if work.is_dir() else work.unlink()  # an unfinished encode of other latents
    return work, None


def _record_file(work: Path, k: int) -> Path:
    """Where a rank of a multi-rank encode records its finished shard k (merged into meta.json by rank 0)."""
    return work / f".shard_{k:05d}.json"


def _shard_done(work: Path, old: dict | None, k: int, rec: dict, shape: tuple[int, ...]) -> dict | None:
    """The record of shard k when `old` (the meta.json resumed from) or the shard's own record file, and the
    shard's files, say it is finished."""
    if not (work / rec["file"]).is_file() or not (work / rec["labels"]).is_file():
        return None
    done = old["shards"][k] if old is not None else None  # (files exist only once whole: written, then renamed)
    if (done is None or "kept" not in done) and _record_file(work, k).is_file():
        try:
            done = read_json(_record_file(work, k))
        except IlctError:
            return None
    if not isinstance(done, dict):
        return None
    rows = done.get("kept", rec["stop"] - rec["start"])  # shards from before skipping at read time: all kept
    try:
        if np.load(work / rec["file"], mmap_mode="r").shape == (rows, *shape) and \
                np.load(work / rec["labels"], mmap_mode="r").shape == (rows,):
            return {**rec, "kept": rows, "skipped": list(done.get("skipped", []))}
    except (ValueError, OSError):
        pass  # damaged: encode again
    return None


def _read(data: ImageDataset | ClipDataset, src: np.ndarray) -> tuple[torch.Tensor, np.ndarray, list[Unreadable]]:
    """A batch in [-1, 1], a bool mask of the items that could be read, and the unreadable ones."""
    if isinstance(data, ImageDataset):
        images, ok, bad = data.read_at(src)
        return to_float(images), ok, bad
    return data.batch_indices(src), np.ones(len(src), bool), []


def _encode_shard(ae: Autoencoder, data: ImageDataset | ClipDataset, rec: dict, shape: tuple[int, ...],
                  opts: dict, bar: tqdm) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Shard `rec`'s latents and labels (the readable items of rec's range) and its skipped items."""
    n_images = len(data)
    lat, labels, skipped = [], [], []
    for b in range(rec["start"], rec["stop"], opts["batch_size"]):
        j = np.arange(b, min(b + opts["batch_size"], rec["stop"]))  # latent indices (>= n_images: mirrored)
        x, ok, bad = _read(data, j % n_images)
        if bad and opts["strict"]:
            raise IlctError(f"unreadable image {bad[0].path}: {bad[0].reason} (--strict)")
        skipped += [{"index": int(i), "path": u.path, "reason": u.reason} for i, u in zip(j[~ok], bad)]
        j = j[ok]
        bar.update(len(ok))
        if not len(j):
            continue
        x = x.to(opts["device"])
        if opts["flip"]:
            mirrored = torch.from_numpy(j >= n_images).to(x.device)
            x = torch.where(mirrored.view(-1, *[1] * (x.ndim - 1)), x.flip(-1), x)  # (n, C, [T,] H, W)
        lat.append(encode_batch(ae, x, opts["posterior"], opts["seed"], j).float().cpu().numpy())
        labels.append(data.labels[j % n_images])
    if not lat:
        return np.empty((0, *shape), np.float32), np.empty(0, np.int64), skipped
    return np.concatenate(lat), np.concatenate(labels).astype(np.int64), skipped


def _statistics(work: Path, shards: list[dict], shape: tuple[int, ...], count: int) -> LatentStats:
    """Per-element mean and (unbiased) std in float64, read back shard by shard."""
    s1 = np.zeros(shape, np.float64)
    s2 = np.zeros(shape, np.float64)
    for rec in shards:
        a = np.load(work / rec["file"], mmap_mode="r").astype(np.float64)
        s1 += a.sum(0)
        s2 += (a * a).sum(0)
    mean = s1 / count
    var = np.maximum(s2 / count - mean**2, 0.0) * count / max(count - 1, 1)
    return LatentStats(torch.from_numpy(mean).float(), torch.from_numpy(np.sqrt(var)).float().clamp_min(1e-6))


def _kept(shards: list[dict]) -> list[int]:
    """The latent indices (>= the number of images: mirrored) that were encoded, in order."""
    out = []
    for rec in shards:
        gone = {int(s["index"]) for s in rec["skipped"]}
        out += [j for j in range(rec["start"], rec["stop"]) if j not in gone]
    return out


def skipped_files(meta: dict) -> list[tuple[str, str]]:
    """(path, reason) of each file a latent directory's encode passed over, once each, in order."""
    seen: dict[str, str] = {}
    for rec in meta.get("shards", []):
        for s in rec.get("skipped", []) if isinstance(rec, dict) else []:
            seen.setdefault(str(s.get("path")), str(s.get("reason")))
    return list(seen.items())


@torch.no_grad()
def encode_to_dir(
    ae: Autoencoder,
    data: ImageDataset | ClipDataset,
    out: str | Path,
    autoencoder_name: str = "",
    data_spec: dict | None = None,
    shard_size: int = 8192,
    batch_size: int = 64,
    flip: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    posterior: str = "mean",
    seed: int = 0,
    strict: bool = False,
    rank: int = 0,
    world: int = 1,
    sync: Callable[[Callable[[], Any]], Any] | None = None,
) -> LatentDir:
    """Encode `data` (and, with flip, its horizontal mirror images) into a latent directory.

    Clips (data.shape = (C, T, H, W)) go through `for_clips(ae)` (an image autoencoder frame by frame;
    its fingerprint is what the directory records) into (c, T', h, w) latents; flip mirrors every frame.
    posterior: "mean", or "sample" (one draw per latent, seeded by (seed, latent index); only for
    autoencoders with a posterior). A file that cannot be read is skipped and recorded in meta.json
    (`skipped_files`); with strict, it stops the encode (IlctError). A new directory is written into
    `partial_dir(out)` and renamed to `out` when finished, so `out` never holds a half-written one.
    Safe to re-run: a finished directory is returned as it is, finished shards are skipped; a directory
    made by another autoencoder, dataset or posterior setting is refused.

    Several ranks (`torchrun ... ilct encode`: rank, world, and `sync`, which runs a phase on every rank and
    stops all of them with one line when it fails on any): rank 0 prepares the folder, rank r encodes shards
    k with k % world == r and records each in its own file, and rank 0 then merges the records and writes
    the statistics (float64 sums read back shard by shard in order: the same bytes at any world size). `out`
    must be on a filesystem every rank sees.
    """
    out = Path(out)
    clips = len(data.shape) == 4  # (C, T, H, W)
    if clips:
        ae = for_clips(ae)
    check_posterior(ae, posterior, autoencoder_name)
    if len(data) == 0:
        raise IlctError(f"dataset {data.name} is empty")
    if clips and flip and data.captions:
        raise IlctError(f"flip: mirroring the clips of {data.name} reverses their motion, and their captions "
                        "(\"... moving left\") would be wrong for the copies; encode them without flip")
    if data.shape[0] != ae.image_channels:
        raise IlctError(f"dataset {data.name} has {data.shape[0]} channels, the autoencoder expects {ae.image_channels}")
    sources = len(data) * (2 if flip else 1)
    try:
        shape = ae.clip_latent_shape(data.shape[2], data.shape[1]) if clips else ae.latent_shape(data.shape[1])
    except ValueError as e:
        raise IlctError(f"{data.name} does not fit the autoencoder: {e} (choose another --resolution)") from None
    shards = [{"file": f"shard_{k:05d}.npy", "labels": f"labels_{k:05d}.npy", "start": s,
               "stop": min(s + shard_size, sources)} for k, s in enumerate(range(0, sources, shard_size))]
    meta = {
        "format": FORMAT, "complete": False, "autoencoder": autoencoder_name, "autoencoder_fingerprint": ae.fingerprint(),
        "dataset": data.name, "data": data_spec or {}, "flip": flip, "sources": sources, "count": None,
        "shape": list(shape), "shards": shards, "posterior": posterior,
        "posterior_seed": seed if posterior == "sample" else None,
    }
    sync = sync or (lambda phase: phase())
    opts = {"batch_size": batch_size, "device": device, "flip": flip, "posterior": posterior, "seed": seed,
            "strict": strict, "rank": rank, "world": world}
    ready = sync(lambda: _prepare(data, out, meta, shape) if rank == 0 else None)  # rank 0 alone writes meta.json
    work, old = sync(lambda: _work_dir(out, meta))  # (rank 0's, as it left it)
    if old.get("complete"):
        return ready if rank == 0 else LatentDir(out)
    meta["shards"] = [_shard_done(work, old, k, rec, shape) or rec for k, rec in enumerate(shards)]
    sync(lambda: _encode_shards(ae.to(device).eval(), data, work, meta, opts, progress and rank == 0))
    done = sync(lambda: _finish(data, work, out, _merged(work, meta, shape)) if rank == 0 else None)
    return done if rank == 0 else LatentDir(out)


def _prepare(data: ImageDataset | ClipDataset, out: Path, meta: dict, shape: tuple[int, ...]) -> LatentDir | None:
    """The folder to encode into, with meta.json recording the shards already finished; a finished directory
    (or one killed just before its rename, finished now) is returned."""
    work, old = _work_dir(out, meta)
    if old is not None and old.get("complete"):
        return LatentDir(out) if work == out else _finish(data, work, out, old)
    meta = {**meta, "shards": [_shard_done(work, old, k, rec, shape) or rec for k, rec in enumerate(meta["shards"])]}
    write_text(work / META_FILE, json.dumps(meta, indent=1))
    return None


def _merged(work: Path, meta: dict, shape: tuple[int, ...]) -> dict:
    """meta.json with every shard's record (the ranks' own record files merged in); a shard that no rank
    finished is an error (it would be missing from the latents)."""
    shards = [_shard_done(work, meta, k, rec, shape) for k, rec in enumerate(meta["shards"])]
    missing = [k for k, rec in enumerate(shards) if rec is None]
    if missing:
        raise IlctError(f"{work}: shard(s) {missing[:4]} were not encoded by any rank")
    return {**meta, "shards": shards}


def _encode_shards(ae: Autoencoder, data: ImageDataset | ClipDataset, work: Path, meta: dict, opts: dict,
                   progress: bool) -> None:
    """Every shard of this rank's (k % world == rank) not finished yet, each written whole and then recorded
    (kept, skipped): in meta.json by a single process, in the shard's own record file by one of several ranks."""
    shape = tuple(meta["shape"])
    unit = "clip" if len(data.shape) == 4 else "img"
    rank, world = opts["rank"], opts["world"]
    mine = [k for k in range(len(meta["shards"])) if k % world == rank]
    total = sum(meta["shards"][k]["stop"] - meta["shards"][k]["start"] for k in mine)
    with tqdm(total=total, desc="encode", disable=not progress, dynamic_ncols=True, unit=unit) as bar:
        for k in mine:
            rec = meta["shards"][k]
            if "kept" in rec:  # finished (_shard_done)
                bar.update(rec["stop"] - rec["start"])
                continue
            lat, labels, skipped = _encode_shard(ae, data, rec, shape, opts, bar)
            _save_npy(work / rec["file"], lat)
            _save_npy(work / rec["labels"], labels)
            meta["shards"][k] = {**rec, "kept": len(lat), "skipped": skipped}
            if world > 1:
                write_text(_record_file(work, k), json.dumps(meta["shards"][k]))
            else:
                write_text(work / META_FILE, json.dumps(meta, indent=1))


def _finish(data: ImageDataset | ClipDataset, work: Path, out: Path, meta: dict) -> LatentDir:
    """Statistics, captions and the completed meta.json; then the partial folder becomes `out`."""
    shards = meta["shards"]
    count = sum(rec["kept"] for rec in shards)
    if count == 0:
        first = "".join(f" (first: {path} ({why}))" for path, why in skipped_files(meta)[:1])
        if work != out:
            shutil.rmtree(work, ignore_errors=True)
        raise IlctError(f"no readable images in {data.name}: all {len(data)} file(s) unreadable{first}")
    _statistics(work, shards, tuple(meta["shape"]), count).save(work / STATS_FILE)
    if data.captions:  # aligned with the latents (flipped copies repeat their image's caption)
        write_text(work / CAPTIONS_FILE, json.dumps([data.captions[j % len(data)] for j in _kept(shards)]))
    meta["count"], meta["complete"] = count, True
    write_text(work / META_FILE, json.dumps(meta, indent=1))
    for stale in [*work.glob(".*.tmp*.npy"), *work.glob(".shard_*.json")]:  # temporary shards, ranks' records
        stale.unlink(missing_ok=True)
    if work != out:
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(work, out)  # `out` is absent or an empty folder (_work_dir)
    return LatentDir(out)


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Written whole under a temporary name, then renamed; never a temporary file left behind. A full disk
    (numpy reports a short write without an errno) is one line naming the file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.npy")
    try:
        np.save(tmp, array)
        os.replace(tmp, path)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT) or (e.errno is None and " requested and " in str(e)):
            raise IlctError(f"no space left on device while writing {path} (the finished shards are kept: free "
                            "some space and run the same command again to resume)") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def default_cache_dir() -> Path:
    return Path(os.environ.get("ILCT_CACHE", Path.home() / ".cache" / "ilct"))


def cache_key(ae: Autoencoder, data: ImageDataset | ClipDataset) -> str:
    if len(data.shape) == 4:
        ae = for_clips(ae)
    h = hashlib.sha256(f"{ae.fingerprint()}|{data.name}|{len(data)}|{data.shape}".encode())
    return h.hexdigest()[:20]


def cached_latents(
    ae: Autoencoder,
    data: ImageDataset | ClipDataset,
    cache_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> LatentDir:
    """The encoded dataset from the cache, encoding it on first use (and finishing an interrupted encode)."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    return encode_to_dir(ae, data, cache_dir / "latents" / cache_key(ae, data), device=device, progress=progress)
