"""TensorBoard events of a run (train.tensorboard=true): what the loop already records, also as events.

Written by rank 0 into RUN/tensorboard/, at the loop's existing check points (no host synchronization of its
own): every number of each record written to log.jsonl as a scalar at its step (the loss and its terms, the
objective's fields such as N and c, img_per_s, nonfinite_total, elapsed_s; the records of an event, such as
`fid` or `rollback`, under "<event>/<key>"), and each periodic sample grid as an image (the PNG saved in
RUN/samples/: for clips, the strip). The `tensorboard` package is optional (`pip install 'ilct[tensorboard]'`);
`check_available` is called before anything of the run is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ilct.errors import IlctError

GRID_TAG = "samples"  # the tag of the periodic sample grids


def check_available() -> None:
    """IlctError (one line) unless the tensorboard package and torch's writer for it import."""
    try:
        import tensorboard  # noqa: F401  (optional dependency: imported only when train.tensorboard is on)
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError as e:
        raise IlctError(f"config: train.tensorboard=true needs the tensorboard package ({e}): "
                        "pip install 'ilct[tensorboard]', or set train.tensorboard=false") from None


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """tag -> value of a log record's numbers (booleans and text left out; "<event>/<key>" in an event's record)."""
    prefix = f"{record['event']}/" if isinstance(record.get("event"), str) else ""
    return {prefix + key: float(value) for key, value in record.items()
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)}


class EventWriter:
    """A SummaryWriter into `folder`; a resumed run (start_step > 0) purges the events a crash left after its
    checkpoint, as its log.jsonl is read from there on."""

    def __init__(self, folder: Path, start_step: int = 0):
        check_available()
        from torch.utils.tensorboard import SummaryWriter  # lazy: optional, and seconds to import

        self.writer = SummaryWriter(str(folder), purge_step=start_step + 1 if start_step else None)

    def log(self, record: dict[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["step"])
        self.writer.flush()

    def image(self, path: Path, step: int, tag: str = GRID_TAG) -> None:
        """The PNG at `path` (a sample grid or clip strip) as it was saved."""
        with Image.open(path) as img:
            array = np.asarray(img.convert("RGB"))
        self.writer.add_image(tag, array, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
