"""Linear layers whose weights oneDNN has pre-packed, for the decode step on the CPU.

A decode forward multiplies a few rows (the sequences still sampling) by every weight of the model. PyTorch's
default CPU product for float32 (MKL's sgemm) handles these skinny products poorly on the AMD EPYC cores
this project measures on: a GEMM copies panels of the weight into its own layout on every call, and here a
second thread barely helps on the largest product. oneDNN with the weight reordered once into its blocked
layout (what vLLM's CPU backend does, `create_onednn_mm(weight, 32)`, and inductor's weight prepacking)
does not repeat that work. Measured with
`benchmarks/decode_gemm.py` (SmolLM2-135M's shapes, 32 rows, float32; docs/performance.md has the table):
the vocabulary projection [32, 576] x [576, 49152] takes 35-41 ms with MKL and 17 ms packed with 2 threads
(53 and 32 ms with one). With 2 threads the built-in engine's rollouts went from 118 to 152 tokens/s
(`benchmarks/rollout_engines.py`); with one thread the end-to-end difference was within noise.

`PackedLinear` packs a copy of an `nn.Linear`'s weight when it is built: the rollout engine builds them at
the start of each `generate` call (~0.35 s for 135 M parameters with 2 threads), so a rollout samples from
the weights as they are at the call, like the unpacked path, and the copies are freed with the call. The
results equal `F.linear`'s up to float32 summation order (~1e-5 relative).
"""

from __future__ import annotations

import torch


def prepack_supported(weight: torch.Tensor) -> bool:
    """True when oneDNN can pre-pack this weight: a float32 CPU tensor and a PyTorch built with oneDNN."""
    return (weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight") and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinear:
    """`linear(x)` for x [..., in] -> [..., out] with a oneDNN-packed copy of `linear.weight` [out, in].

    rows: the number of rows the product will usually see (oneDNN chooses the layout for it; any other
    number of rows also works, e.g. after finished rows leave the batch).
    """

    __slots__ = ("packed", "bias", "out_features")

    def __init__(self, linear: torch.nn.Linear, rows: int):
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), max(1, rows))
        self.bias = None if linear.bias is None else linear.bias.detach()
        self.out_features = linear.weight.shape[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:  # the op takes [rows, in]
            return self(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], self.out_features)
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")


def maybe_packed(linear: torch.nn.Linear, rows: int):
    """A `PackedLinear` for `rows` rows when rows > 0 and oneDNN supports the weight, else the module itself
    (same call signature)."""
    if rows > 0 and isinstance(linear, torch.nn.Linear) and prepack_supported(linear.weight):
        return PackedLinear(linear, rows)
    return linear
