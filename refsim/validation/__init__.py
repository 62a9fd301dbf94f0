"""refsim.validation: tools for checking another FedAvg implementation against refsim. Golden
vectors that an independent implementation must reproduce; the comparison of weights
(refsim traces, checkpoints, or a framework's saved state dicts) round by round and tensor by
tensor, behind ``refsim compare``; the step-by-step check of a candidate's float32 local steps
and server step from its own weights, with the diagnosis of ReLU and max-pool near-ties
(``steps.py``, ``near_ties.py``, ``traced_step.py``, ``server_step.py``, behind
``refsim compare-steps``); and accuracy curves against refsim's seed band (``curves.py``). It sits above ``refsim.fedavg`` and below the CLI; nothing in
the simulator imports it. See ``docs/validation.md``; the golden vectors
(``golden.py``, ``refsim golden``) are specified in ``docs/golden.md``.
"""
