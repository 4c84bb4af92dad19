"""ilct: improved latent consistency training (Dao et al., ICLR 2025) in PyTorch."""

import os as _os
import sys as _sys

__version__ = "0.1.0"

# CPU threads that wait sleep instead of spinning (before torch loads its OpenMP runtime, which reads this
# once). With libgomp's default spin, two processes sharing a CPU's cores hold each other's cores at every
# parallel region, and a training step takes tens of times longer instead of about twice as long
# (measured: benchmarks/speed/sharing.py, docs/performance.md). Set OMP_WAIT_POLICY yourself
# (ACTIVE or PASSIVE) and ilct leaves it; OMP_NUM_THREADS sets the thread count as usual.
if "torch" not in _sys.modules:
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def load(path, device: str = "auto", allow_other_autoencoder: bool = False):
    """An exported model folder (`ilct export`) or a run folder, ready to sample: `ilct.load(DIR).generate(...)`
    (ilct.sharing.model). Imported when called, so that `import ilct` (and the CLI's start) stays light."""
    from ilct.sharing.model import load as _load

    return _load(path, device, allow_other_autoencoder)
