"""TFF's Adam and Yogi step (``tff.learning.optimizers.build_adam`` / ``build_yogi``, TFF 0.87,
``python/learning/optimizers/{adam,yogi}.py``), shared by TFF's server optimizers
(``server_tff.py``) and the clients' ``adam-tff`` (``client_opt.py``). Kingma & Ba, ICLR 2015,
arXiv:1412.6980 (Adam); Zaheer et al., NeurIPS 2018 (Yogi). With t = 1, 2, ... the number of
steps, a the "accumulator" and p the "preconditioner" (both 0 at first for Adam)::

    a <- a + (g - a) * (1 - b1)
    p <- p + (g^2 - p) * (1 - b2)                       (Adam)
    p <- p + (1 - b2) * sign(g^2 - p) * g^2             (Yogi)
    lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)
    w <- w - lr_t * a / (sqrt(p) + eps)

Floating point, as TFF stores Python-float hyperparameters: lr, b1, b2 and eps are float32
numbers, cast to the weights' dtype where they meet them, and lr_t is computed entirely in
float32 and then cast (so in float64, 1 - b1 is 1 - float64(float32(0.9))). Measured against
TFF in ``tests/test_validation_tff.py`` (``docs/tff-semantics.md``).
"""

from __future__ import annotations

import numpy as np

from refsim.backend import get_xp

__all__ = ["tff_normalized_lr", "tff_adam_step"]

_F32 = np.float32


def tff_normalized_lr(lr: float, beta1: float, beta2: float, t: int) -> np.float32:
    """lr * sqrt(1 - b2^t) / (1 - b1^t), every operation in float32 as TFF's ADAM and YOGI
    compute it (``tf.math.pow`` of float32, equal to NumPy's float32 power bit for bit for
    t = 1..100: ``tests/test_validation_tff.py``).

    >>> float(tff_normalized_lr(0.5, 0.5, 0.75, 1))  # 0.5 * sqrt(1 - 0.75) / (1 - 0.5)
    0.5
    """
    b1, b2, step = _F32(beta1), _F32(beta2), _F32(t)
    return _F32(lr) * np.sqrt(_F32(1) - b2 ** step) / (_F32(1) - b1 ** step)


def tff_adam_step(w, g, a, p, lr: float, beta1: float, beta2: float, eps: float, t: int,
                  yogi: bool = False):
    """Step t of TFF's Adam (or Yogi): (w, a, p) after it, arrays (P,) of w's dtype, in TFF's
    order of operations; the inputs are not modified."""
    dt = w.dtype.type
    xp = get_xp(w)
    one = dt(1)
    a = a + (g - a) * (one - dt(_F32(beta1)))  # (P,)
    g2 = g * g  # (P,)
    if yogi:
        p = p + (one - dt(_F32(beta2))) * xp.sign(g2 - p) * g2  # (P,)
    else:
        p = p + (g2 - p) * (one - dt(_F32(beta2)))  # (P,)
    lr_t = dt(tff_normalized_lr(lr, beta1, beta2, t))
    return w - lr_t * a / (xp.sqrt(p) + dt(_F32(eps))), a, p
