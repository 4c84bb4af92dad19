"""Latents: encoded datasets on disk, their statistics and the latent cache.

A package above both `ilct.autoencoders` (which encode) and `ilct.data` (the images they encode), so that
neither of those imports the other's users: autoencoders -> data, latents -> both.
"""

from ilct.latents.directory import (CAPTIONS_FILE, FORMAT, META_FILE, POSTERIORS, STATS_FILE, LatentDir, LatentStats,
                                    cache_key, cached_latents, check_posterior, default_cache_dir, encode_batch,
                                    encode_to_dir, posterior_noise, read_meta)
from ilct.latents.shards import LatentShards

__all__ = ["CAPTIONS_FILE", "FORMAT", "META_FILE", "POSTERIORS", "STATS_FILE", "LatentDir", "LatentShards", "LatentStats", "cache_key",
           "cached_latents", "check_posterior", "default_cache_dir", "encode_batch", "encode_to_dir", "posterior_noise", "read_meta"]
