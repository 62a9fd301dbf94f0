"""The bits TensorFlow Federated counts for an update, to compare refsim with TFF like for like.

Reference: TFF's ``tff.learning.compression_aggregator`` and the "Tuning recommended aggregations
for learning" / "TFF for Federated Learning Research: Model and Update Compression" tutorial
(tensorflow/federated, ``docs/tutorials/tff_for_federated_learning_research_compression.ipynb``),
which builds on Konecny et al., arXiv:1610.05492. There, a float32 tensor with more than
``threshold`` = 20,000 elements is uniformly quantized to b = 8 bits and bit-packed with 28 useful
bits per int32 word (TFF's ``BitpackingEncodingStage``), plus two float32 endpoints:

    bits(tensor of n elements) = 32 * ceil(b * n / 28) + 64   if n > threshold
                               = 32 * n                       otherwise

and a round costs the sum over tensors, times the number of clients. TFF quantizes the
example-weighted update (a deviation from refsim's ``Codec``, which quantizes what it is given).
``refsim`` itself counts 8 * len(bytes) of its own format (``codec.py``); see docs/compression.md.
"""

from __future__ import annotations

import operator

__all__ = ["TFF_THRESHOLD", "tff_tensor_bits", "tff_round_bits", "TFF_TUTORIAL_CNN_SIZES"]

TFF_THRESHOLD = 20_000
# Tensor sizes of the tutorial's CNN (conv 5x5x32, conv 5x5x64, dense 512, dense 10;
# kernels then biases): 1,663,370 parameters.
TFF_TUTORIAL_CNN_SIZES = (800, 32, 51_200, 64, 1_605_632, 512, 5_120, 10)


def tff_tensor_bits(n: int, bits: int | None = 8, threshold: int = TFF_THRESHOLD) -> int:
    """Bits TFF counts for one float32 tensor of n elements (bits=None: uncompressed).

    >>> tff_tensor_bits(1_605_632), tff_tensor_bits(5_120), tff_tensor_bits(5_120, None)
    (14680128, 163840, 163840)
    """
    n = operator.index(n)
    if n < 0:
        raise ValueError(f"tensor size must be >= 0, got {n}")
    if bits is None or n <= threshold:
        return 32 * n
    b = operator.index(bits)
    if not 1 <= b <= 16:
        raise ValueError(f"bits must be in 1..16, got {b}")
    return 32 * -(-b * n // 28) + 64


def tff_round_bits(sizes, num_clients: int, bits: int | None = 8,
                   threshold: int = TFF_THRESHOLD) -> int:
    """Bits of one round: num_clients * sum over tensors of :func:`tff_tensor_bits`.

    >>> tff_round_bits(TFF_TUTORIAL_CNN_SIZES, 10, None), tff_round_bits(TFF_TUTORIAL_CNN_SIZES, 10)
    (532278400, 153575360)
    """
    k = operator.index(num_clients)
    if k < 0:
        raise ValueError(f"num_clients must be >= 0, got {k}")
    return k * sum(tff_tensor_bits(n, bits, threshold) for n in sizes)
