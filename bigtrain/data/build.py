"""Build the loader the trainer uses from the job config."""

from __future__ import annotations

from bigtrain.config.job import JobConfig
from bigtrain.data.loader import DistributedWindowLoader, Loader
from bigtrain.data.sources import SYNTHETIC, SyntheticSource, TokenFileSource
from bigtrain.errors import BigtrainError

# Held-out windows of the sources that have no held-out split come from a disjoint seed stream.
_HELDOUT_SEED_OFFSET = 1_000_003


def build_loader(job: JobConfig, dp_rank: int, dp_size: int, split: str = "train") -> Loader:
    paths = job.data.path or [SYNTHETIC]
    if len(paths) > 1:
        raise BigtrainError("data.path: mixing several sources needs preprocessed dataset directories")
    path = paths[0]
    seed = job.train.seed + (_HELDOUT_SEED_OFFSET if split != "train" else 0)
    m = job.model
    if path == SYNTHETIC:
        source = SyntheticSource(m.vocab_size, m.seq_len, seed)
    elif path.endswith(".npy"):
        source = TokenFileSource(path, m.seq_len, seed, m.vocab_size)
    else:
        raise BigtrainError(f"data.path: {path!r} is not a dataset directory, a .npy token file or 'synthetic'")
    return DistributedWindowLoader(source, job.train.micro_batch_size, dp_rank, dp_size)
