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
``test_summary`` prints the speed ratios against zstd level 1 measured in the same run: the
calls of refsim and zstd alternate, each timed in CPU seconds of the calling thread
(``time.thread_time``: on a shared machine the time other processes hold the core does not
count; both coders are single-threaded), and the ratio is the median over rounds of the
per-round ratio. ``test_fixed_cost_at_1000_symbols``, ``test_table_cost`` and
``test_topk_bits_per_nonzero`` print the other figures of ``docs/benchmarks.md``
("Compression kernels").
Input: N(0, 0.01**2) float32, like a client delta, quantized (stochastic, seed 1) to 8, 4 and
2 bits for the symbol benchmarks.
"""

import collections
import importlib
import time
import zlib

import numpy as np
import pytest

from refsim.compress import bitpack, huffman, huffman_table, huffman_v2

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
        "refsim_huffman_v1": (lambda: huffman.encode(s, version=1), huffman.decode),
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


CODERS = ["refsim_huffman", "refsim_huffman_v1", "zstd_1", "zlib_1", "bitarray_huffman",
          "dahuffman"]


def _check_coder(name, s, coders):
    if name not in coders:
        pytest.skip(f"{name} not installed or not run at this size")
    enc, dec = coders[name]
    blob = enc()
    out = dec(blob)
    out = np.frombuffer(out, np.uint8) if isinstance(out, bytes) else out
    np.testing.assert_array_equal(out, s)
    if name.startswith("refsim_huffman") and s.size <= 10**5:
        assert blob == huffman.encode_naive(s, version=1 if name.endswith("v1") else 2)
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


def _cpu(fn):
    """CPU seconds of this thread for one call (other processes on the core do not count)."""
    t0 = time.thread_time()
    fn()
    return time.thread_time() - t0


def _alternating(fns: dict, rounds: int) -> dict:
    """{name: [seconds per round]}: every round calls each fn once, in turn (warmed up)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(_cpu(fn))
    return times


def _median_ratio(times: dict, base: str, other: str) -> float:
    """Median over rounds of base / other: > 1 when other is faster."""
    return float(np.median(np.array(times[base]) / np.array(times[other])))


@pytest.mark.parametrize("n", [1_663_370, 10**7])
def test_summary(n):
    """Same-run ratios against zstd level 1 (median over rounds of the per-round ratio, the
    calls alternating), sizes against the entropy, version 1 against version 2."""
    rounds = 21 if n < 5 * 10**6 else 7
    x = _delta(n)
    q = Q.quantize(x, 8, seed=1)
    np.testing.assert_array_equal(q.levels, Q.quantize_naive(x, 8, seed=1).levels)
    for bits in BITS:
        s = _symbols(n, bits)
        raw = s.tobytes()
        cz, dz = zstd.ZstdCompressor(level=1), zstd.ZstdDecompressor()
        h2, h1, zb = huffman.encode(s), huffman.encode(s, version=1), cz.compress(raw)
        np.testing.assert_array_equal(huffman.decode(h2), s)
        np.testing.assert_array_equal(huffman.decode(h1), s)
        assert dz.decompress(zb) == raw
        head = s[:10**5]  # the oracles on a prefix (their strings of bits are slow at 10^6+)
        assert huffman.encode(head) == huffman.encode_naive(head)
        np.testing.assert_array_equal(huffman.decode_naive(huffman.encode(head)), head)
        t = _alternating({"enc": lambda: huffman.encode(s), "zenc": lambda: cz.compress(raw),
                          "dec": lambda: huffman.decode(h2), "zdec": lambda: dz.decompress(zb),
                          "enc1": lambda: huffman.encode(s, version=1),
                          "dec1": lambda: huffman.decode(h1)}, rounds)
        med = {k: float(np.median(v)) for k, v in t.items()}
        ent = huffman.entropy_bits(huffman.histogram(s))
        print(f"\n{bits}-bit n={n}: v2 enc {n / med['enc'] / 1e6:6.0f} MB/s, dec "
              f"{n / med['dec'] / 1e6:6.0f} | zstd-1 enc {n / med['zenc'] / 1e6:6.0f}, dec "
              f"{n / med['zdec'] / 1e6:6.0f} | ratio to zstd-1 (median of {rounds}): enc "
              f"{_median_ratio(t, 'zenc', 'enc'):.2f}, dec {_median_ratio(t, 'zdec', 'dec'):.2f}"
              f" | v1: enc {_median_ratio(t, 'zenc', 'enc1'):.2f}, dec "
              f"{_median_ratio(t, 'zdec', 'dec1'):.2f}")
        print(f"   bytes: v2 {len(h2)} (header+table {huffman.header_size(h2)}), v1 {len(h1)} "
              f"(header+table {huffman.header_size(h1)}), zstd-1 {len(zb)}; bits/sym v2 "
              f"{8 * len(h2) / n:.4f}, entropy {ent:.4f}")
        assert len(h2) <= len(h1)  # the same code, a smaller table


def test_fixed_cost_at_1000_symbols():
    """Time per call at 1,000 8-bit symbols (an upper bound on the fixed cost: the
    per-symbol work is ~1-2 us of it), median of alternating rounds of 200 calls."""
    s = _symbols(1000, 8)
    h2, h1 = huffman.encode(s), huffman.encode(s, version=1)
    assert h2 == huffman.encode_naive(s)
    np.testing.assert_array_equal(huffman.decode_naive(h2), s)

    def calls(fn):
        return lambda: [fn() for _ in range(200)]

    hm = huffman.encode(s, lengths="mdl")
    assert hm == huffman.encode_naive(s, lengths="mdl")
    t = _alternating({"enc": calls(lambda: huffman.encode(s)),
                      "dec": calls(lambda: huffman.decode(h2)),
                      "enc1": calls(lambda: huffman.encode(s, version=1)),
                      "dec1": calls(lambda: huffman.decode(h1)),
                      "encm": calls(lambda: huffman.encode(s, lengths="mdl"))}, 7)
    us = {k: float(np.median(v)) / 200 * 1e6 for k, v in t.items()}
    print(f"\n1000 symbols, us per call: v2 encode {us['enc']:.1f}, decode {us['dec']:.1f}; "
          f"v1 encode {us['enc1']:.1f}, decode {us['dec1']:.1f}; bytes v2 {len(h2)}, v1 "
          f"{len(h1)}; v2 lengths='mdl' encode {us['encm']:.1f} us, {len(hm)} bytes")


def _table_bits(data: bytes) -> int:
    """Bits of a version-2 stream's code-length table (with its padding)."""
    n, pos = huffman_v2._varint(data, 2)
    a, pos = huffman_v2._varint(data, pos)
    buf = np.frombuffer(data, np.uint8)
    return huffman_table.read_table(buf, 8 * pos, 8 * buf.size, np.zeros(a, np.int64)) - 8 * pos


def test_table_cost():
    """The code-length table against the payload for alphabets of A values at n = 10 A and
    100 A (the default lengths and ``lengths="mdl"``), the bench data, and the permutation of
    all 65,536 uint16 symbols (against its entropy)."""
    rng = np.random.default_rng(0)
    perm = rng.permutation(2**16).astype(np.uint16)
    data = huffman.encode(perm)
    print(f"\npermutation of 2**16: {8 * len(data)} bits, entropy {16 * 2**16}: "
          f"+{100 * (8 * len(data) / (16 * 2**16) - 1):.3f}% (table {_table_bits(data)} bits)"
          f"; version 1: {8 * len(huffman.encode(perm, version=1))} bits")
    worst = worst_mdl = (0.0, "")
    for a, per in ((16, 10), (256, 10), (4096, 10), (65536, 10), (16, 100), (256, 100),
                   (4096, 100)):
        dt, n = (np.uint8 if a <= 256 else np.uint16), per * a
        cases = {"uniform": rng.integers(0, a, n),
                 "gaussian": np.clip(np.round(rng.normal(a / 2, a / 10, n)), 0, a - 1),
                 "geometric": np.minimum(rng.geometric(8 / a, n) - 1, a - 1),
                 "zipf": np.minimum(rng.zipf(1.3, n) - 1, a - 1)}
        for name, sym in cases.items():
            d = huffman.encode(sym.astype(dt))
            frac = _table_bits(d) / (8 * (len(d) - huffman.header_size(d)))
            m = huffman.encode(sym.astype(dt), lengths="mdl")
            np.testing.assert_array_equal(huffman.decode(m), sym)
            frac_mdl = _table_bits(m) / (8 * (len(m) - huffman.header_size(m)))
            v1 = ""
            if name == "uniform" and per == 10:  # version 1: a byte per length (and a header)
                old = huffman.encode(sym.astype(dt), version=1)
                v1 = f" (v1 header and table: {8 * huffman.header_size(old)} bits)"
            print(f"A={a:5d} n={n:6d} {name:9s}: table {_table_bits(d):6d} bits = "
                  f"{100 * frac:5.2f}% of the payload; lengths='mdl': {100 * frac_mdl:5.2f}%, "
                  f"stream {100 * (len(m) / len(d) - 1):+.2f}%{v1}")
            if per == 10:
                worst = max(worst, (frac, f"A={a} {name}"))
                worst_mdl = max(worst_mdl, (frac_mdl, f"A={a} {name}"))
            if per == 10 and name == "uniform" and a >= 4096:  # the cost of trying the codes
                x = sym.astype(dt)
                t = _alternating({"optimal": lambda: huffman.encode(x),
                                  "mdl": lambda: huffman.encode(x, lengths="mdl")}, 5)
                print(f"  encode, ms (median of 5, alternating): default "
                      f"{1e3 * np.median(t['optimal']):.2f}, lengths='mdl' "
                      f"{1e3 * np.median(t['mdl']):.2f}")
    for bits in BITS:
        for n in (10 * 2**bits, 10**5, 1_663_370):
            d = huffman.encode(_symbols(n, bits))
            print(f"bench {bits}-bit n={n}: table {_table_bits(d)} bits = "
                  f"{100 * _table_bits(d) / (8 * (len(d) - huffman.header_size(d))):.3f}%")
    print(f"worst at n = 10 A: {100 * worst[0]:.2f}% ({worst[1]}); lengths='mdl': "
          f"{100 * worst_mdl[0]:.2f}% ({worst_mdl[1]})")


def test_topk_bits_per_nonzero():
    """Entropy-coded top-k of a 2NN-sized update (199,210 values, 1% kept): bits per non-zero
    of the indices against log2 C(n, k) / k, and of the values against their entropy."""
    from refsim.compress import Codec, TopKConfig, report

    x = _delta(199_210)
    for bits in (None, 8, 4):
        codec = Codec(TopKConfig(fraction=0.01, bits=bits), huffman=True)
        data = codec.encode([x], seed=1)
        np.testing.assert_array_equal(codec.decode(data)[0] != 0,
                                      Codec(TopKConfig(fraction=0.01)).decode(
                                          Codec(TopKConfig(fraction=0.01)).encode([x]))[0] != 0)
        t = report(data).tensors[0]
        k = t.nonzeros
        value_bits = t.payload_bits - t.index_bits
        print(f"\ntop-1% bits={bits}: k={k}, record {t.record_bits / k:.2f} bits/nnz; indices "
              f"{t.index_bits / k:.3f} (log2 C(n,k)/k = {t.index_entropy_bits / k:.3f}); values "
              f"{value_bits / k:.3f}" + (f" (entropy {t.entropy_bits_per_symbol:.3f})"
                                         if bits else " (float32)") + "; raw format 64")
