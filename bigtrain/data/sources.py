"""Window sources that need no preprocessing: a synthetic task and flat token files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bigtrain.errors import BigtrainError

SYNTHETIC = "synthetic"


class SyntheticSource:
    """A learnable sequence task: each window is an arithmetic progression modulo the vocabulary.

    The start and the stride are drawn per window from the seed, so the first two tokens are noise
    and every later token follows from them: a model that learns the rule drives the loss far below
    ln(vocab). Window ``i`` of a given seed is always the same.
    """

    def __init__(self, vocab_size: int, seq_len: int, seed: int, max_stride: int = 7):
        self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed
        self.max_stride = max(1, min(max_stride, vocab_size - 1))

    def window(self, index: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, index])
        start = int(rng.integers(self.vocab_size))
        stride = int(rng.integers(1, self.max_stride + 1))
        return (start + stride * np.arange(self.seq_len + 1, dtype=np.int64)) % self.vocab_size

    def sample_id(self, index: int) -> str:
        return f"synthetic:{self.seed}:{index}"

    def doc_starts(self, index: int) -> np.ndarray:
        """Each window is one sequence of its own."""
        return np.zeros(0, dtype=np.int64)


class TokenFileSource:
    """Windows cut from one flat array of token ids (a ``.npy`` file, memory-mapped).

    Windows start every ``seq_len`` tokens and overlap by one (the label of the last position);
    each epoch visits all windows in a fresh seeded permutation.
    """

    def __init__(self, path: str | Path, seq_len: int, seed: int, vocab_size: int):
        self.path = Path(path)
        if not self.path.is_file():
            raise BigtrainError(f"data.path: token file not found: {self.path}")
        try:
            self.tokens = np.load(self.path, mmap_mode="r")
        except (ValueError, OSError) as e:
            raise BigtrainError(f"{self.path}: not a readable .npy token file ({e})") from None
        if self.tokens.ndim != 1 or not np.issubdtype(self.tokens.dtype, np.integer):
            raise BigtrainError(f"{self.path}: expected a 1-D integer array of token ids, "
                                f"got shape {self.tokens.shape} dtype {self.tokens.dtype}")
        self.seq_len, self.seed = seq_len, seed
        self.n_windows = (len(self.tokens) - 1) // seq_len
        if self.n_windows < 1:
            raise BigtrainError(f"{self.path}: {len(self.tokens)} tokens is fewer than one window of "
                                f"model.seq_len+1 = {seq_len + 1}")
        top = int(self.tokens.max())
        if top >= vocab_size:
            raise BigtrainError(f"{self.path}: token id {top} is outside model.vocab_size={vocab_size}")
        self._perm_epoch, self._perm = -1, None

    def _position(self, index: int) -> int:
        epoch, k = divmod(index, self.n_windows)
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._perm_epoch = epoch
        return int(self._perm[k])

    def window(self, index: int) -> np.ndarray:
        w = self._position(index)
        return np.asarray(self.tokens[w * self.seq_len: w * self.seq_len + self.seq_len + 1], dtype=np.int64)

    def sample_id(self, index: int) -> str:
        return f"{self.path.name}:{self._position(index)}"
