"""Micro-benchmarks of refsim.compress against the coders a user would pick instead.

Run (one core, the others idle if you can)::

    NUMBA_NUM_THREADS=1 PYTHONPATH=. python -m pytest bench/bench_compress.py --benchmark-enable \
        --benchmark-columns=median,iqr,rounds --benchmark-sort=name -s

Every benchmark first checks its result against the refsim oracle (or a round trip for the
third-party coders) and only then times it (the llm.c ``dev/cuda`` rule). ``extra_info['MB/s']``
is input megabytes per second at the median: float32 bytes for quantize/dequantize, symbol bytes
(1 per 8-bit-or-less symbol) for pack and the entropy coders. Each group marks its baseline
(``extra_info['role'] = 'baseline'``: zstd level 1 for the coders, NumPy with
``Generator.random`` for quantize, the NumPy oracle otherwise), so ``python bench/ratios.py
results.json`` prints same-run ratios (candidate median time / baseline median time).
``test_summary`` prints the speed ratios against zstd level 1 measured in the same run
(medians of repeated timings), which is what ``docs/benchmarks_compress.md`` quotes.
Input: N(0, 0.01**2) float32, like a client delta, quantized (stochastic, seed 1) to 8, 4 and
2 bits for the symbol benchmarks.
"""

import collections
import importlib
import time
import zlib

import numpy as np
import pytest

from refsim.compress import bitpack, huffman

# The module (the package attribute ``refsim.compress.quantize`` is the function).
Q = importlib.import_module("refsim.compress.quantize")
SIZES = [10**3, 10**4, 10**5, 10**6, 10**7]
BITS = [8, 4, 2]
zstd = pytest.importorskip("zstandard")


def _delta(n):
    return np.random.default_rng(2026).normal(0, 0.01, n).astype(np.float32)  # (n,)


_SYMBOLS = {}


def _symbols(n, bits):
    if (n, bits) not in _SYMBOLS:
        _SYMBOLS[(n, bits)] = Q.quantize(_delta(n), bits, seed=1).levels  # (n,) uint8
    return _SYMBOLS[(n, bits)]


def _rounds(n):
    return int(max(5, min(200, 3 * 10**7 // max(n, 1) // 10)))


BASELINES = {"zstd_1", "numpy_generator", "numpy_oracle"}  # per group; see bench/ratios.py


def _run(benchmark, fn, *args, n_bytes, impl):
    """Time fn(*args); record MB/s, and mark the group's baseline for ``bench/ratios.py``."""
    quantize_oracle = impl == "numpy_oracle" and benchmark.group.startswith("quantize")
    if impl in BASELINES and not quantize_oracle:  # quantize's oracle is not timed at 1e7
        benchmark.extra_info["role"] = "baseline"
    fn(*args)  # warm-up (Numba compilation / caches)
    result = benchmark.pedantic(fn, args=args, rounds=_rounds(n_bytes), warmup_rounds=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["MB/s"] = round(n_bytes / benchmark.stats.stats.median / 1e6, 1)
    return result


# ---------------------------------------------------------------- quantize / dequantize / pack


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("impl", ["numba", "numpy_oracle", "numpy_generator"])
def test_quantize(benchmark, impl, bits, n):
    x = _delta(n)
    if impl == "numpy_oracle" and n > 10**6:
        pytest.skip("oracle timed up to 1e6")
    ref = Q.quantize_naive(x[:10**5], bits, seed=1).levels
    np.testing.assert_array_equal(Q.quantize(x[:10**5], bits, seed=1).levels, ref)
    benchmark.group = f"quantize {bits}-bit n={n:.0e}"
    if impl == "numba":
        _run(benchmark, lambda: Q.quantize(x, bits, seed=1), n_bytes=x.nbytes, impl=impl)
    elif impl == "numpy_oracle":
        _run(benchmark, lambda: Q.quantize_naive(x, bits, seed=1), n_bytes=x.nbytes, impl=impl)
    else:  # what a NumPy user writes: Generator.random for the uniforms (not reproducible here)
        def numpy_generator():
            lo, hi = float(x.min()), float(x.max())
            t = (x.astype(np.float64) - lo) * ((2**bits - 1) / (hi - lo))
            f = np.floor(t)
            u = np.random.default_rng(1).random(x.size)
            return (f + (u < t - f)).astype(np.uint8)
        _run(benchmark, numpy_generator, n_bytes=x.nbytes, impl=impl)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("impl", ["numba", "numpy_oracle"])
def test_dequantize(benchmark, impl, n):
    q = Q.quantize(_delta(n), 8, seed=1)
    np.testing.assert_array_equal(Q.dequantize(q), Q.dequantize_naive(q))
    benchmark.group = f"dequantize 8-bit n={n:.0e}"
    fn = Q.dequantize if impl == "numba" else Q.dequantize_naive
    _run(benchmark, fn, q, n_bytes=4 * n, impl=impl)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("impl", ["numba", "numpy_oracle"])
def test_bitpack(benchmark, impl, bits, n):
    s = _symbols(n, bits)
    packed = bitpack.pack(s, bits)
    np.testing.assert_array_equal(packed, bitpack.pack_naive(s, bits))
    np.testing.assert_array_equal(bitpack.unpack(packed, n, bits), s)
    benchmark.group = f"bitpack {bits}-bit n={n:.0e}"
    fn = bitpack.pack if impl == "numba" else bitpack.pack_naive
    _run(benchmark, fn, s, bits, n_bytes=n, impl=impl)


# ---------------------------------------------------------------- entropy coders


def _coders(s):
    """name -> (encode(), decode(blob)) for the symbols s, each checked by a round trip."""
    raw = s.tobytes()
    cz, dz = zstd.ZstdCompressor(level=1), zstd.ZstdDecompressor()
    coders = {
        "refsim_huffman": (lambda: huffman.encode(s), huffman.decode),
        "zstd_1": (lambda: cz.compress(raw), dz.decompress),
        "zlib_1": (lambda: zlib.compress(raw, 1), zlib.decompress),
    }
    try:
        from bitarray import bitarray, decodetree
        from bitarray.util import huffman_code

        code = huffman_code(collections.Counter(s.tolist()))
        tree = decodetree(code)

        def ba_encode():
            a = bitarray()
            a.encode(code, s.tolist())
            return a

        coders["bitarray_huffman"] = (ba_encode, lambda a: np.array(list(a.decode(tree)), np.uint8))
    except ImportError:
        pass
    if s.size <= 10**4:
        try:
            from dahuffman import HuffmanCodec

            codec = HuffmanCodec.from_data(s.tolist())
            coders["dahuffman"] = (lambda: codec.encode(s.tolist()),
                                   lambda b: np.array(codec.decode(b), np.uint8))
        except ImportError:
            pass
    return coders


CODERS = ["refsim_huffman", "zstd_1", "zlib_1", "bitarray_huffman", "dahuffman"]


def _check_coder(name, s, coders):
    if name not in coders:
        pytest.skip(f"{name} not installed or not run at this size")
    enc, dec = coders[name]
    blob = enc()
    out = dec(blob)
    out = np.frombuffer(out, np.uint8) if isinstance(out, bytes) else out
    np.testing.assert_array_equal(out, s)
    if name == "refsim_huffman" and s.size <= 10**5:
        assert blob == huffman.encode_naive(s)
        np.testing.assert_array_equal(huffman.decode_naive(blob), s)
    return enc, dec, blob


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("coder", CODERS)
def test_encode(benchmark, coder, bits, n):
    s = _symbols(n, bits)
    enc, _dec, blob = _check_coder(coder, s, _coders(s))
    benchmark.group = f"encode {bits}-bit n={n:.0e}"
    _run(benchmark, enc, n_bytes=n, impl=coder)
    nbytes = len(blob) if not hasattr(blob, "nbytes") else blob.nbytes
    benchmark.extra_info["bits/symbol"] = round(8 * nbytes / n, 4)
    benchmark.extra_info["entropy"] = round(huffman.entropy_bits(huffman.histogram(s)), 4)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("coder", CODERS)
def test_decode(benchmark, coder, bits, n):
    s = _symbols(n, bits)
    _enc, dec, blob = _check_coder(coder, s, _coders(s))
    benchmark.group = f"decode {bits}-bit n={n:.0e}"
    _run(benchmark, dec, blob, n_bytes=n, impl=coder)


# ---------------------------------------------------------------- the ratios, in one run


def _median_seconds(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@pytest.mark.parametrize("n", [1_663_370, 10**7])
def test_summary(n):
    """Median MB/s of refsim vs zstd level 1 on the same symbols, and size vs entropy."""
    repeat = 15 if n < 5 * 10**6 else 7
    x = _delta(n)
    q = Q.quantize(x, 8, seed=1)
    np.testing.assert_array_equal(q.levels, Q.quantize_naive(x, 8, seed=1).levels)
    tq = _median_seconds(lambda: Q.quantize(x, 8, seed=1), repeat)
    print(f"\nquantize 8-bit stochastic, n={n}: {x.nbytes / tq / 1e9:.2f} GB/s of float32")
    for bits in BITS:
        s = _symbols(n, bits)
        coders = _coders(s)
        h_enc, h_dec, h_blob = _check_coder("refsim_huffman", s, coders)
        z_enc, z_dec, z_blob = _check_coder("zstd_1", s, coders)
        te, td = _median_seconds(h_enc, repeat), _median_seconds(lambda: h_dec(h_blob), repeat)
        ze, zd = _median_seconds(z_enc, repeat), _median_seconds(lambda: z_dec(z_blob), repeat)
        ent = huffman.entropy_bits(huffman.histogram(s))
        payload = 8 * (len(h_blob) - huffman.header_size(h_blob)) / n
        print(f"{bits}-bit n={n}: huffman enc {n / te / 1e6:7.1f} MB/s,"
              f" dec {n / td / 1e6:7.1f} MB/s"
              f" | zstd-1 enc {n / ze / 1e6:7.1f}, dec {n / zd / 1e6:7.1f}"
              f" | enc ratio {ze / te:.2f}, dec ratio {zd / td:.2f}"
              f" | bits/sym huffman {8 * len(h_blob) / n:.4f} (payload {payload:.4f}),"
              f" zstd {8 * len(z_blob) / n:.4f}, entropy {ent:.4f}"
              f" | header {huffman.header_size(h_blob)} B")
        if bits < 8:  # blocks of 8 // bits levels as one 8-bit symbol (Codec(block=...))
            k = 8 // bits
            blocks = bitpack.to_blocks(s, bits, k)
            np.testing.assert_array_equal(bitpack.from_blocks(blocks, n, bits, k), s)
            b_blob = huffman.encode(blocks)
            tb = _median_seconds(lambda: huffman.encode(bitpack.to_blocks(s, bits, k)), repeat)
            tbd = _median_seconds(lambda: bitpack.from_blocks(huffman.decode(b_blob), n, bits, k),
                                  repeat)
            print(f"   blocks of {k}: enc {n / tb / 1e6:7.1f} MB/s, dec {n / tbd / 1e6:7.1f} MB/s"
                  f" (per level) | enc ratio {ze / tb:.2f}, dec ratio {zd / tbd:.2f}"
                  f" | bits/level {8 * len(b_blob) / n:.4f}, entropy {ent:.4f}")
