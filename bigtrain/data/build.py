"""Build the loader the trainer uses from the job config.

``data.path`` holds either preprocessed dataset directories (with ``manifest.json``; several are mixed
by ``data.weights``), one ``.npy`` token file, or the word ``synthetic``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bigtrain.config.job import JobConfig
from bigtrain.data.loader import DistributedWindowLoader, Loader
from bigtrain.data.shards import is_dataset_dir, load_manifest
from bigtrain.data.sources import SYNTHETIC, SyntheticSource, TokenFileSource
from bigtrain.errors import BigtrainError

# Held-out windows of the sources that have no held-out split come from a disjoint seed stream.
_HELDOUT_SEED_OFFSET = 1_000_003


def build_source(job: JobConfig, split: str = "train"):
    """The :class:`~bigtrain.data.loader.WindowSource` behind :func:`build_loader`."""
    from bigtrain.data.shard_source import MixtureSource, ShardWindowSource

    if split not in ("train", "heldout"):
        raise BigtrainError(f"split {split!r}: expected train or heldout")
    paths = job.data.path or [SYNTHETIC]
    m = job.model
    dirs = [p for p in paths if p != SYNTHETIC and Path(p).is_dir()]
    if dirs:
        if len(dirs) != len(paths):
            other = next(p for p in paths if p not in dirs)
            raise BigtrainError(f"data.path: {other!r} cannot be mixed with dataset directories; "
                                "mixing needs preprocessed dataset directories only")
        for p in dirs:
            if not is_dataset_dir(p):
                raise BigtrainError(f"data.path: {p} has no manifest.json (run `bigtrain preprocess` "
                                    "to completion first)")
        seed = job.train.seed
        sources = [ShardWindowSource(p, m.seq_len, seed, split=split, stream=i,
                                     shuffle_buffer=job.data.shuffle_buffer if split == "train" else 0,
                                     vocab_size=m.vocab_size) for i, p in enumerate(dirs)]
        hashes = {s.manifest["tokenizer"]["sha256"] for s in sources}
        if len(hashes) > 1:
            raise BigtrainError("data.path: the datasets were tokenized with different tokenizers "
                                f"({', '.join(dirs)}); preprocess them with the same one")
        if len(sources) == 1:
            return sources[0]
        weights = job.data.weights or [1.0] * len(sources)
        return MixtureSource(sources, weights, seed + (_HELDOUT_SEED_OFFSET if split != "train" else 0))
    if len(paths) > 1:
        raise BigtrainError("data.path: mixing several sources needs preprocessed dataset directories")
    path = paths[0]
    seed = job.train.seed + (_HELDOUT_SEED_OFFSET if split != "train" else 0)
    if path == SYNTHETIC:
        return SyntheticSource(m.vocab_size, m.seq_len, seed)
    if path.endswith(".npy"):
        return TokenFileSource(path, m.seq_len, seed, m.vocab_size)
    if not Path(path).exists():
        raise BigtrainError(f"data.path: {path!r} does not exist")
    raise BigtrainError(f"data.path: {path!r} is not a dataset directory, a .npy token file or 'synthetic'")


def build_loader(job: JobConfig, dp_rank: int, dp_size: int, split: str = "train") -> Loader:
    d = job.data
    source = build_source(job, split)
    if d.document_masking and not hasattr(source, "doc_starts"):
        raise BigtrainError(f"data.document_masking: {', '.join(d.path)} records no document boundaries (a token "
                            "file); use a `bigtrain preprocess` dataset")
    return DistributedWindowLoader(source, job.train.micro_batch_size, dp_rank, dp_size,
                                   document_masking=d.document_masking, reset_positions=d.reset_position_ids)


def dataset_tokenizer(job: JobConfig) -> dict[str, Any] | None:
    """The tokenizer record (path, sha256, vocab_size, bos/eos/pad ids) of the configured datasets, or
    None for synthetic data and token files. Use it to fill ``job.tokenizer`` for checkpoints."""
    dirs = [p for p in (job.data.path or []) if p != SYNTHETIC and is_dataset_dir(p)]
    if not dirs:
        return None
    return dict(load_manifest(dirs[0])["tokenizer"])
