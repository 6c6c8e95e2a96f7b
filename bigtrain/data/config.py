"""Training data config."""

from __future__ import annotations

from dataclasses import dataclass, field

from bigtrain.config.base import Config
from bigtrain.errors import BigtrainError


@dataclass
class DataConfig(Config):
    path: list[str] = field(default_factory=list)
    """Data sources: preprocessed dataset directories (with manifest.json), token files
    (.npy of integers), or the word `synthetic` for a generated learnable sequence task."""
    weights: list[float] = field(default_factory=list)
    """Mixing weight per path (normalised); empty means equal weights."""
    shuffle_buffer: int = 1024
    """Size of the shuffle buffer over packed sequences (0 disables shuffling)."""
    document_masking: bool = False
    """Attend only within each document of a packed window (documents as preprocessing stored them); the
    prediction of a document's first token from the previous document's EOS carries no loss."""
    reset_position_ids: bool = False
    """With document_masking: rotary positions restart at 0 in each document (not only the attention)."""

    def validate(self, prefix: str = "data.") -> None:
        if self.weights and len(self.weights) != len(self.path):
            raise BigtrainError(f"{prefix}weights has {len(self.weights)} entries but {prefix}path has "
                                f"{len(self.path)}: give one weight per path")
        if any(w < 0 for w in self.weights) or (self.weights and sum(self.weights) <= 0):
            raise BigtrainError(f"{prefix}weights={self.weights} must be non-negative with a positive sum")
        if self.reset_position_ids and not self.document_masking:
            raise BigtrainError(f"{prefix}reset_position_ids=true needs {prefix}document_masking=true")
        if self.shuffle_buffer < 0:
            raise BigtrainError(f"{prefix}shuffle_buffer={self.shuffle_buffer} must not be negative")
