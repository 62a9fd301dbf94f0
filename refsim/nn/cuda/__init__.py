"""CUDA kernels for the CuPy backend of ``refsim.nn``, each beside (and checked against) the
NumPy oracle its docstring names. See ``docs/gpu.md``.

Importing this package does not import CuPy; the kernels are compiled on first use, per dtype
and device (``refsim.cuda_launch``). The layers of ``refsim.nn`` call these functions for
CuPy arrays; GEMMs go through ``cupy.matmul`` (cuBLAS).
"""

from refsim.nn.cuda.elementwise import (bias_add_cuda, channel_sum_cuda, relu_backward_cuda,
                                        relu_forward_cuda)
from refsim.nn.cuda.im2col import col2im_cuda, im2col_cuda
from refsim.cuda_launch import cupy_launch
from refsim.nn.cuda.loss import softmax_cross_entropy_cuda
from refsim.nn.cuda.pool import maxpool2d_backward_cuda, maxpool2d_forward_cuda

__all__ = [
    "cupy_launch",
    "im2col_cuda", "col2im_cuda", "maxpool2d_forward_cuda", "maxpool2d_backward_cuda",
    "relu_forward_cuda", "relu_backward_cuda", "bias_add_cuda", "channel_sum_cuda",
    "softmax_cross_entropy_cuda",
]
