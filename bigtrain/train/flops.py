"""Model FLOPs per token and model FLOPs utilisation (MFU)."""

from __future__ import annotations

from bigtrain.model.config import ModelConfig

# Dense bf16 peak FLOP/s per device (vendor datasheets, without sparsity).
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 80GB HBM3": 989e12,
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H100": 989e12,
    "GH200": 989e12,
    "A100": 312e12,
    "A10G": 125e12,
    "L40S": 362e12,
    "L4": 121e12,
    "B200": 2250e12,
}


def peak_flops(device_name: str) -> float | None:
    """Longest table key contained in the device name, e.g. 'NVIDIA H100 80GB HBM3' → H100 SXM's peak."""
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_BF16_FLOPS[key]
    return None


def flops_per_token(cfg: ModelConfig) -> float:
    """6·N for the matrix multiplies of forward and backward plus 12·L·H·Q·T for attention scores
    (N: parameters outside the input embedding, L layers, H heads, Q head size, T sequence length)."""
    n = cfg.num_params(include_embedding=False)
    return 6 * n + 12 * cfg.n_layers * cfg.n_heads * cfg.head_size * cfg.seq_len
