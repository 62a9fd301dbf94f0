"""refsim.validation: tools for checking another FedAvg implementation against refsim. Golden
vectors that an independent implementation must reproduce, and the comparison of weights
(refsim traces, checkpoints, or a framework's saved state dicts) round by round and tensor by
tensor, behind ``refsim compare``. It sits above ``refsim.fedavg`` and below the CLI; nothing in
the simulator imports it. See ``docs/validation.md``; the golden vectors
(``golden.py``, ``refsim golden``) are specified in ``docs/golden.md``.
"""
