"""Datasets (images in [-1, 1], NCHW float32, with integer labels) and the latent cache."""

from ilct.data.fashion_mnist import load_fashion_mnist
from ilct.data.images import ImageDataset

__all__ = ["ImageDataset", "load_fashion_mnist"]
