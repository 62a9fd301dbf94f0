"""TFF's bit accounting reproduces the compression tutorial's figures."""

import pytest

from refsim.compress.tff_bits import TFF_TUTORIAL_CNN_SIZES, tff_round_bits, tff_tensor_bits


def test_tff_tutorial_figures():
    assert sum(TFF_TUTORIAL_CNN_SIZES) == 1_663_370
    plain = tff_round_bits(TFF_TUTORIAL_CNN_SIZES, 10, bits=None)
    quant = tff_round_bits(TFF_TUTORIAL_CNN_SIZES, 10, bits=8)
    assert (plain, quant) == (532_278_400, 153_575_360)
    assert (round(plain / 2**20, 2), round(quant / 2**20, 2)) == (507.62, 146.46)


def test_tff_tensor_rule():
    assert tff_tensor_bits(20_000) == 32 * 20_000  # not above the threshold
    assert tff_tensor_bits(20_001) == 32 * -(-8 * 20_001 // 28) + 64
    assert tff_tensor_bits(28, bits=1, threshold=0) == 32 + 64
    with pytest.raises(ValueError):
        tff_tensor_bits(-1)


def test_tutorial_sizes_are_the_tensors_of_refsims_cnn_mnist():
    from refsim.nn import cnn_mnist  # tests may join layers that the library keeps apart

    assert tuple(spec.size for spec in cnn_mnist().layout) == TFF_TUTORIAL_CNN_SIZES
