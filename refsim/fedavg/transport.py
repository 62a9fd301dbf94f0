"""What travels between server and clients in one round, and its exact size in bits.

Uplink (client k -> server, round t): the update delta_k. Without a codec it travels as raw
floats (8 * itemsize * P bits). With a codec it is split into the model's tensors
(``model.layout`` order, each reshaped to its shape) and encoded with
``seed = quantize_key(seed, t, k)``; the server decodes the bytes and concatenates the tensors
back into one vector. Bits = 8 * len(bytes), headers included.

Downlink (server -> each sampled client, round t): the global weights w_t. Without a downlink
codec they travel as raw floats. With one, the server encodes w_t once per round with
``seed = broadcast_key(seed, t)`` (every sampled client receives the same bytes, as in the
lossy server-to-client compression of Caldas et al., "Expanding the Reach of Federated Learning
by Reducing Client Resource Requirements", arXiv:1812.07210); the clients train from the
decoded w~_t and send delta_k = w_k - w~_t, while the server keeps its exact w_t and applies
the mean delta to it. Broadcast bits = m * (bits of one copy).

A payload is ``bytes`` (coded) or an ndarray (raw). The functions are pure: the same
(config, round, client, input) give the same bytes on every machine.
"""

from __future__ import annotations

import numpy as np

from refsim.backend import is_cupy_array
from refsim.compress import (Codec, QSGDConfig, QuantizerConfig, broadcast_key, quantize_key,
                             report, tff_round_bits)
from refsim.nn import Model

__all__ = ["encode_tensors", "decode_tensors", "encode_update", "encode_broadcast",
           "decode_broadcast", "tff_uplink_bits"]


def encode_tensors(codec: Codec | None, model: Model, flat: np.ndarray, key: int
                   ) -> tuple[bytes | np.ndarray, int]:
    """(payload, bits) of a flat (P,) vector: raw when ``codec`` is None, else
    ``codec.encode(per-tensor views, seed=key)``."""
    if codec is None:
        return flat, 8 * flat.itemsize * flat.size
    tensors = list(model.views(flat).values())  # per-tensor views in model.layout order
    data = codec.encode(tensors, seed=key)
    return data, 8 * len(data)


def decode_tensors(payload: bytes | np.ndarray, model: Model, dtype) -> np.ndarray:
    """The flat (P,) vector of ``dtype`` a payload of :func:`encode_tensors` carries.

    ValueError when the payload is corrupt (``refsim.compress.decode``) or does not carry the
    model's tensors (count, shapes) in the expected dtype.
    """
    dtype = np.dtype(dtype)
    if isinstance(payload, np.ndarray) or is_cupy_array(payload):  # raw, on the host or a GPU
        if payload.shape != (model.num_params,) or payload.dtype != dtype:
            raise ValueError(f"a raw payload must be ({model.num_params},) {dtype}, got "
                             f"{payload.shape} {payload.dtype}")
        return payload
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise TypeError(f"a payload must be bytes or an ndarray, got {type(payload).__name__}")
    tensors = Codec.decode(bytes(payload), max_elements=model.num_params)
    shapes = [tuple(t.shape) for t in tensors]
    if shapes != [s.shape for s in model.layout]:
        raise ValueError(f"the payload carries tensors {shapes}, but {model.name} has "
                         f"{[s.shape for s in model.layout]}")
    if any(t.dtype != dtype for t in tensors):
        raise ValueError(f"the payload carries {[str(t.dtype) for t in tensors]}, expected "
                         f"{dtype}")
    return np.concatenate([t.ravel() for t in tensors])  # (P,)


def encode_update(codec: Codec | None, model: Model, delta: np.ndarray, seed: int, round_: int,
                  client: int) -> tuple[bytes | np.ndarray, int, float | None]:
    """Client k's uplink in round t: (payload, exact bits, entropy bound in bits or None).

    The entropy bound is ``report(bytes).entropy_bound_bits`` (sum over tensors of n * H of the
    coded symbols) for quantize / QSGD codecs; None otherwise.
    """
    payload, bits = encode_tensors(codec, model, delta, quantize_key(seed, round_, client))
    entropy = None
    if codec is not None and isinstance(codec.method, (QuantizerConfig, QSGDConfig)):
        entropy = report(payload).entropy_bound_bits
    return payload, bits, entropy


def encode_broadcast(codec: Codec | None, model: Model, params: np.ndarray, seed: int,
                     round_: int) -> tuple[bytes | np.ndarray, int]:
    """The server's downlink in round t: (payload, bits of one copy)."""
    return encode_tensors(codec, model, params, broadcast_key(seed, round_))


def decode_broadcast(payload: bytes | np.ndarray, model: Model, dtype) -> np.ndarray:
    """w~_t, the weights a client trains from (a copy when the payload is raw)."""
    return decode_tensors(payload, model, dtype).copy()


def tff_uplink_bits(codec: Codec | None, model: Model, dtype, reporting: int) -> int | None:
    """TFF's count for one round (``refsim.compress.tff_round_bits``) where it is comparable:
    float32, and raw updates or bit-packed uniform quantization; None otherwise."""
    if np.dtype(dtype) != np.float32:
        return None
    sizes = [s.size for s in model.layout]
    if codec is None or codec.method is None:
        return tff_round_bits(sizes, reporting, None)
    if isinstance(codec.method, QuantizerConfig) and not codec.huffman and codec.block == 1:
        return tff_round_bits(sizes, reporting, codec.method.bits, codec.threshold)
    return None
