"""refsim: a transparent NumPy/CuPy reference simulator for federated learning.

Read ``README.md`` for the reading order. Subpackages: ``refsim.backend`` (array module and
random streams), ``refsim.nn`` (the hand-written networks), ``refsim.data`` (embedded
datasets, partitioners, client batching), ``refsim.compress`` (quantization, Huffman coding,
the update codec).
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
