"""Random-access window source over a preprocessed dataset's shards.

The stream of one epoch is the concatenation of the split's shards in a seeded per-epoch order
(each shard's documents in stored order, each ending with EOS). It is cut into windows of
``seq_len + 1`` tokens that start every ``seq_len`` tokens (the last token of a window is the first
of the next, so every token is predicted once), across document and shard boundaries; the tail that
does not fill a window is dropped. Windows are then shuffled within consecutive blocks of
``shuffle_buffer`` windows by a seeded permutation per (epoch, block) — a shuffle buffer whose
result is computable for any index. Epochs repeat with fresh orders.

``window(i)`` therefore depends only on (dataset, split, seq_len, seed, shuffle_buffer, i): no state,
so resuming at any sample under any data-parallel degree is exact. Shards are never decoded whole: a
window is copied out of the read-only memory maps of the documents it spans (:func:`open_shard`), and
an LRU cache keeps the small per-shard indexes and maps of the shards a shuffle block touches (windows
of one block are close together in the stream, so a shard or two). Pages read are dropped from the
process's resident memory whenever the stream position moves to the next span of blocks, so resident
memory follows the shuffle block, not the shard size.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import numpy as np

from bigtrain.data.shards import MappedShard, load_manifest, open_shard
from bigtrain.errors import BigtrainError


MAX_OPEN_SHARDS = 64  # shards the cache keeps indexed and mapped (a file descriptor each)
RELEASE_WINDOWS = 1024  # pages read are dropped each time the position enters the next span of >= this many windows


class ShardWindowSource:
    def __init__(self, directory: str | Path, seq_len: int, seed: int, split: str = "train",
                 shuffle_buffer: int = 1024, stream: int = 0, cache_shards: int = 4, vocab_size: int | None = None):
        self.directory = Path(directory)
        self.manifest = load_manifest(self.directory)
        self.split, self.seq_len, self.seed, self.stream = split, int(seq_len), int(seed), int(stream)
        self.shuffle_buffer = int(shuffle_buffer)
        self.cache_shards = max(1, int(cache_shards))
        vocab = int(self.manifest["tokenizer"]["vocab_size"])
        if vocab_size is not None and vocab > vocab_size:
            raise BigtrainError(f"{self.directory}: tokenized with a vocabulary of {vocab}, larger than "
                                f"model.vocab_size={vocab_size}")
        shards = [s for s in self.manifest["shards"] if s["split"] == split and s["tokens"] > 0]
        if not shards:
            raise BigtrainError(f"{self.directory}: no {split} shards with tokens in {self.directory / 'manifest.json'}"
                                + (" (preprocess with --heldout-fraction > 0)" if split == "heldout" else ""))
        self.paths = [self.directory / s["path"] for s in shards]
        self.shard_tokens = np.array([s["tokens"] for s in shards], dtype=np.int64)
        self.sha256 = [s.get("sha256") for s in shards]
        self._names = [f"{self.directory.name}/{p.relative_to(self.directory)}" for p in self.paths]  # for sample_id
        self._verified: set[int] = set()  # shards whose bytes this process has checked against sha256
        for p, s in zip(self.paths, shards):
            if not p.is_file():
                raise BigtrainError(f"{p}: shard listed in the manifest is missing")
            if s.get("bytes") is not None and p.stat().st_size != s["bytes"]:
                raise BigtrainError(f"{p}: shard has {p.stat().st_size} bytes, the manifest says {s['bytes']}")
        self.total_tokens = int(self.shard_tokens.sum())
        self.n_windows = (self.total_tokens - 1) // self.seq_len
        if self.n_windows < 1:
            raise BigtrainError(f"{self.directory}: the {split} split has {self.total_tokens} tokens, fewer than "
                                f"one window of model.seq_len+1 = {self.seq_len + 1}")
        # keep every shard one shuffle block can touch (plus one on each side) open
        span = (max(self.shuffle_buffer, 1) + 1) * self.seq_len
        need = int(np.ceil(span / max(1.0, float(self.shard_tokens.min())))) + 2
        self.cache_shards = min(len(self.paths), max(self.cache_shards, min(need, MAX_OPEN_SHARDS)))
        self._cache: OrderedDict[int, MappedShard] = OrderedDict()
        b = max(self.shuffle_buffer, 1)
        self._release_span = -(-RELEASE_WINDOWS // b) * b  # whole shuffle blocks, so a block is never split
        self._span = None  # (epoch, span) of the last window read
        self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._blocks: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    # --- order --------------------------------------------------------------------------------
    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        hit = self._epochs.get(epoch)
        if hit is None:
            n = len(self.paths)
            if self.shuffle_buffer > 0:
                order = np.random.default_rng([self.seed, self.stream, epoch, 1]).permutation(n)
            else:
                order = np.arange(n)
            starts = np.concatenate([[0], np.cumsum(self.shard_tokens[order])])
            hit = (order, starts)
            self._epochs[epoch] = hit
            if len(self._epochs) > 4:
                self._epochs.popitem(last=False)
        return hit

    def _position(self, index: int) -> tuple[int, int]:
        """(epoch, window number within the epoch's stream) of global sample ``index``."""
        if index < 0:
            raise IndexError(index)
        epoch, k = divmod(int(index), self.n_windows)
        b = self.shuffle_buffer
        if b <= 1:
            return epoch, k
        block, r = divmod(k, b)
        perm = self._blocks.get((epoch, block))
        if perm is None:
            lo = block * b
            size = min(b, self.n_windows - lo)
            perm = np.random.default_rng([self.seed, self.stream, epoch, 2, block]).permutation(size) + lo
            self._blocks[(epoch, block)] = perm
            if len(self._blocks) > 8:
                self._blocks.popitem(last=False)
        return epoch, int(perm[r])

    def _shard(self, i: int) -> MappedShard:
        shard = self._cache.get(i)
        if shard is None:
            # Only the first open in this process hashes the file (through the map, a block at a time).
            shard = open_shard(self.paths[i], None if i in self._verified else self.sha256[i])
            self._verified.add(i)
            if shard.n_tokens != self.shard_tokens[i]:
                raise BigtrainError(f"{self.paths[i]}: holds {shard.n_tokens} tokens, the manifest says "
                                    f"{self.shard_tokens[i]}")
            self._cache[i] = shard
            if len(self._cache) > self.cache_shards:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(i)
        return shard

    def _follow(self, epoch: int, w: int) -> None:
        """Drop the pages read so far once the position leaves its span of shuffle blocks: the next
        windows are elsewhere in the stream, and the maps would otherwise keep whole shards resident."""
        span = (epoch, w // self._release_span)
        if span != self._span:
            if self._span is not None:
                for shard in self._cache.values():
                    shard.release()
            self._span = span

    def _pieces(self, index: int):
        """(shard, first token, token count, offset in the window) of each shard piece of window ``index``."""
        epoch, w = self._position(index)
        self._follow(epoch, w)
        order, starts = self._epoch(epoch)
        start = w * self.seq_len
        j = int(np.searchsorted(starts, start, side="right")) - 1
        off, filled = start - int(starts[j]), 0
        while filled < self.seq_len + 1:  # on into the next shards of the order when this one ends mid-window
            shard = self._shard(int(order[j]))
            take = min(shard.n_tokens - off, self.seq_len + 1 - filled)
            yield shard, off, take, filled
            filled += take
            j, off = j + 1, 0

    # --- WindowSource -------------------------------------------------------------------------
    def window(self, index: int) -> np.ndarray:
        out = np.empty(self.seq_len + 1, dtype=np.int64)
        for shard, off, take, filled in self._pieces(index):
            shard.copy(off, off + take, out[filled:filled + take])
        return out

    def doc_starts(self, index: int) -> np.ndarray:
        """Offsets in window ``index`` where a document begins (a shard's first token begins one too)."""
        found: list[int] = []
        for shard, off, take, filled in self._pieces(index):
            if filled:
                found.append(filled)
            found += [filled + x for x in shard.doc_starts(off, off + take)]
        return np.array(found, dtype=np.int64)

    def sample_id(self, index: int) -> str:
        epoch, w = self._position(index)
        order, starts = self._epoch(epoch)
        start = w * self.seq_len
        j = int(np.searchsorted(starts, start, side="right")) - 1
        return f"{self._names[int(order[j])]}@{start - int(starts[j])}"

    def __len__(self) -> int:
        return self.n_windows


class MixtureSource:
    """Deterministic, random-access weighted mix of window sources.

    Samples come in blocks of ``block`` samples; every block holds ``c_d`` samples of source ``d``
    (the largest-remainder rounding of ``block × weight_d``), placed at seeded random positions. Sample
    ``i`` maps to source ``d`` and that source's own index ``(i // block) · c_d + rank``, so each source
    is read in its own order and the realised share is within ``1/block`` of the weight everywhere.
    """

    def __init__(self, sources: list, weights: list[float], seed: int, block: int = 4096):
        if len(sources) != len(weights):
            raise BigtrainError("data.weights: one weight per data.path entry is needed")
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise BigtrainError(f"data.weights={list(weights)} must be non-negative with a positive sum")
        w = w / w.sum()
        exact = w * block
        counts = np.floor(exact).astype(np.int64)
        rest = block - int(counts.sum())
        counts[np.argsort(-(exact - counts), kind="stable")[:rest]] += 1
        self.sources, self.weights, self.seed, self.block = sources, w, int(seed), int(block)
        self.counts = counts
        self.pattern = np.repeat(np.arange(len(sources)), counts)
        self._blocks: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def _block(self, b: int) -> tuple[np.ndarray, np.ndarray]:
        hit = self._blocks.get(b)
        if hit is None:
            labels = self.pattern[np.random.default_rng([self.seed, 3, b]).permutation(self.block)]
            ranks = np.empty(self.block, dtype=np.int64)
            for d, c in enumerate(self.counts):
                ranks[labels == d] = np.arange(c) + b * c
            hit = (labels, ranks)
            self._blocks[b] = hit
            if len(self._blocks) > 4:
                self._blocks.popitem(last=False)
        return hit

    def locate(self, index: int) -> tuple[int, int]:
        """(source number, index within that source) of global sample ``index``."""
        b, r = divmod(int(index), self.block)
        labels, ranks = self._block(b)
        return int(labels[r]), int(ranks[r])

    def window(self, index: int) -> np.ndarray:
        d, j = self.locate(index)
        return self.sources[d].window(j)

    def sample_id(self, index: int) -> str:
        d, j = self.locate(index)
        return self.sources[d].sample_id(j)

    def doc_starts(self, index: int) -> np.ndarray:
        d, j = self.locate(index)
        return self.sources[d].doc_starts(j)
