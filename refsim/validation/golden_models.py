"""Golden vectors of the reference models' loss and gradient, and of one SGD step.

``models.npz``: for each of ``cnn_mnist``, ``mlp_2nn``, ``logistic``, ``cnn_cifar``
(``refsim.nn.models``), with parameters from ``golden_inputs.fixed_params`` and a batch of two
examples, the logits, the mean softmax cross-entropy and its flat gradient (layout of
``docs/nn.md``). The CNN has 1,663,370 parameters, too many to store, so the file keeps the
full logits and loss, the parameter and gradient values at up to 16 evenly spaced positions of
every tensor (the first and last included), and every tensor's gradient norm (an exactly
rounded ``math.fsum``), which no wrong entry anywhere in a tensor escapes.

``sgd_step.npz``: one step ``w - dtype(lr) * grad`` (``refsim.nn.sgd_step``) of the small
network :func:`golden_mlp`, whose vectors are stored whole, in float64 and in float32 (the
learning rate is cast to the parameters' dtype before the product).

Logits, losses and gradients come from ``oracle_model`` (the loop oracles, no BLAS), so that
the files regenerate byte for byte on any machine; ``Model.loss_and_grad`` agrees with them to
the tolerance of ``docs/golden.md``.
"""

from __future__ import annotations

import math

import numpy as np

from refsim.nn import Dense, Flatten, Model, ReLU, cnn_cifar, cnn_mnist, logistic, mlp_2nn, sgd_step
from refsim.validation.golden_inputs import fixed_integers, fixed_params, fixed_uniform
from refsim.validation.oracle_model import oracle_loss_and_grad

__all__ = ["golden_mlp", "sample_positions", "model_vectors", "sgd_step_vectors"]

SAMPLES_PER_TENSOR = 16
# model factory -> first key: params use key, x key + 1, labels key + 2
_MODELS = ((cnn_mnist, 701), (mlp_2nn, 711), (logistic, 721), (cnn_cifar, 731))
_BATCH = 2


def golden_mlp() -> Model:
    """The small network of the SGD and FedAvg vectors: (N, 1, 4, 4) -> 16 -> 6 (ReLU) -> 3.

    123 parameters: fc1.weight (16, 6), fc1.bias (6,), fc2.weight (6, 3), fc2.bias (3,).
    """
    return Model("golden_mlp", (1, 4, 4), (
        Flatten(),
        Dense("fc1", 16, 6), ReLU(),
        Dense("fc2", 6, 3),
    ))


def sample_positions(model: Model) -> np.ndarray:
    """(S,) int64 flat positions: per tensor of size s, q = min(s, 16) positions
    ``offset + (j * (s - 1)) // (q - 1)``, j = 0..q-1 (just ``offset`` when s == 1)."""
    out = []
    for spec in model.layout:
        q = min(spec.size, SAMPLES_PER_TENSOR)
        steps = np.arange(q, dtype=np.int64) * (spec.size - 1) // max(q - 1, 1)  # (q,)
        out.append(spec.offset + steps)
    return np.concatenate(out)  # (S,)


def _tensor_norms(model: Model, grad: np.ndarray) -> np.ndarray:
    """(T,) sqrt(fsum(g * g)) of each tensor, in layout order (exactly rounded sum)."""
    return np.array([math.sqrt(math.fsum((g * g).tolist()))
                     for g in (grad[s.offset:s.offset + s.size] for s in model.layout)])


def model_vectors() -> dict[str, np.ndarray]:
    """Per model m: m.x, m.labels, m.logits, m.loss, m.tensor_offsets, m.positions,
    m.params_at, m.grad_at, m.grad_norms (see the module docstring)."""
    out = {}
    for factory, key in _MODELS:
        model = factory()
        m = model.name
        params = fixed_params(model, key)  # (P,)
        x = fixed_uniform(key + 1, (_BATCH, *model.input_shape), 0.0, 1.0)  # (N, C, H, W)
        labels = fixed_integers(key + 2, (_BATCH,), 0, model.num_classes)  # (N,)
        logits, loss, grad = oracle_loss_and_grad(model, params, x, labels)  # grad: (P,)
        positions = sample_positions(model)  # (S,)
        offsets = [s.offset for s in model.layout] + [model.num_params]
        out.update({
            f"{m}.x": x, f"{m}.labels": labels, f"{m}.logits": logits,
            f"{m}.loss": np.float64(loss), f"{m}.tensor_offsets": np.array(offsets, np.int64),
            f"{m}.positions": positions, f"{m}.params_at": params[positions],
            f"{m}.grad_at": grad[positions], f"{m}.grad_norms": _tensor_norms(model, grad),
        })
    return out


def sgd_step_vectors() -> dict[str, np.ndarray]:
    """labels, lr, and per dtype d in (float64, float32): d.params, d.x, d.loss (in dtype d),
    d.grad, d.params_after = sgd_step(params, grad, lr)."""
    model = golden_mlp()
    params64 = fixed_params(model, 801)  # (P,)
    x64 = fixed_uniform(802, (5, *model.input_shape), 0.0, 1.0)  # (N, 1, 4, 4)
    labels = fixed_integers(803, (5,), 0, model.num_classes)  # (N,)
    lr = 0.1
    out = {"labels": labels, "lr": np.float64(lr)}
    for dtype in (np.float64, np.float32):
        d = np.dtype(dtype).name
        params, x = params64.astype(dtype), x64.astype(dtype)
        _, loss, grad = oracle_loss_and_grad(model, params, x, labels)
        out.update({f"{d}.params": params, f"{d}.x": x, f"{d}.loss": np.dtype(dtype).type(loss),
                    f"{d}.grad": grad, f"{d}.params_after": sgd_step(params, grad, lr)})
    return out
