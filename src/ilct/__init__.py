"""ilct: improved latent consistency training (Dao et al., ICLR 2025) in PyTorch."""

__version__ = "0.1.0"
