"""The pieces of one round (refsim/fedavg/client.py, server.py, transport.py): training metrics
as TFF reports them, the downlink codec, per-client test sets, payload checks, backends."""

import numpy as np
import pytest
from checks import contiguous_partition, mnist_slice

from refsim.backend import Purpose, available_backends, make_rng
from refsim.compress import Codec, QuantizerConfig, broadcast_key
from refsim.data.batching import client_batches
from refsim.fedavg import (ClientHParams, DType, FedAvgConfig, FedData, aggregate_round,
                           decode_tensors, encode_tensors, run_fedavg, run_round,
                           sample_clients, train_client)
from refsim.nn import logistic, mlp_2nn
from refsim.nn.loss import softmax_cross_entropy

SIZES = [37, 5, 61, 12, 90, 23]  # unequal n_k, K = 6


def _data(dtype: str) -> FedData:
    return mnist_slice(dtype, sum(SIZES), 300)


def _partition():
    return contiguous_partition(SIZES)


def test_training_metrics_are_the_running_minibatch_averages():
    """train_loss = sum over every local minibatch of |b| * loss(w before the step) / sum |b|,
    over the reporting clients (TFF's build_weighted_fed_avg); recomputed here by hand."""
    model, data, parts = mlp_2nn(), _data("float64"), _partition()
    cfg = FedAvgConfig(fraction=0.5, epochs=2, batch_size=7, lr=0.2, rounds=1, seed=3,
                       dtype=DType.FLOAT64)
    w0 = model.init(make_rng(3, Purpose.INIT), "keras", np.float64)
    _, _, facts = run_round(w0, {}, 1, cfg, model, data, parts)
    loss_sum = correct = seen = 0
    for k in sample_clients(3, 1, len(parts), 3):
        w = w0.copy()
        for b in client_batches(parts[k], 7, 2, 3, 1, int(k)):
            logits = model.forward(w, data.x_train[b])
            loss, _ = softmax_cross_entropy(logits, data.y_train[b])
            loss_sum += len(b) * loss
            correct += int((logits.argmax(1) == data.y_train[b]).sum())
            seen += len(b)
            w = w - 0.2 * model.loss_and_grad(w, data.x_train[b], data.y_train[b])[1]
    assert seen == 2 * sum(SIZES[k] for k in facts["clients"])
    assert facts["train_loss"] == pytest.approx(loss_sum / seen, rel=1e-12)
    assert facts["train_accuracy"] == correct / seen
    # Not the loss of the broadcast model (what refsim reported before this change).
    union = np.concatenate([parts[k] for k in facts["clients"]])
    before, _ = softmax_cross_entropy(model.forward(w0, data.x_train[union]),
                                      data.y_train[union])
    assert abs(before - facts["train_loss"]) > 1e-3


def test_downlink_codec_clients_train_from_the_decoded_broadcast():
    """With a downlink codec: every sampled client starts from decode(encode(w_t, key(seed,
    t))), the server applies the mean delta to its exact w_t, and broadcast bits = m * 8 *
    len(bytes)."""
    model, data, parts = logistic(), _data("float32"), _partition()
    down = Codec(QuantizerConfig(8, stochastic=True), huffman=True)
    cfg = FedAvgConfig(fraction=0.5, epochs=1, batch_size=10, lr=0.1, rounds=1, seed=1,
                       downlink=down)
    w0 = model.init(make_rng(1, Purpose.INIT), "keras", np.float32)
    w1, _, facts = run_round(w0, {}, 1, cfg, model, data, parts)
    tensors = [w0[s.offset:s.offset + s.size].reshape(s.shape) for s in model.layout]
    data_bytes = down.encode(tensors, seed=broadcast_key(1, 1))
    assert facts["broadcast_bits"] == 3 * 8 * len(data_bytes) < 3 * 32 * model.num_params
    w_tilde = np.concatenate([t.ravel() for t in down.decode(data_bytes)])
    assert not np.array_equal(w_tilde, w0)  # lossy
    hp = ClientHParams(model, 1, 10, 0.1)
    reports = [train_client(w_tilde, data.x_train, data.y_train, parts[k], hp, None, 1, 1, k)
               for k in facts["clients"]]
    expected, _, _ = aggregate_round(w0, {}, 1, reports, cfg, model)
    np.testing.assert_array_equal(w1, expected)
    # A raw downlink is m copies of 32-bit weights and a different result.
    raw, _, raw_facts = run_round(w0, {}, 1, FedAvgConfig(
        fraction=0.5, epochs=1, batch_size=10, lr=0.1, rounds=1, seed=1), model, data, parts)
    assert raw_facts["broadcast_bits"] == 3 * 32 * model.num_params
    assert not np.array_equal(raw, w1)


def test_eval_partition_is_the_federated_evaluation_on_per_client_test_sets():
    model, data, parts = logistic(), _data("float32"), _partition()
    test_parts = [np.arange(0, 100), np.arange(100, 130), np.arange(130, 300)] + [
        np.arange(0, 0)] * 3  # three clients without test data are skipped
    cfg = FedAvgConfig(fraction=0.5, rounds=2, seed=0)
    h = run_fedavg(cfg, model, data, parts, eval_partition=test_parts)
    from refsim.fedavg import evaluate
    per = [evaluate(model, h.params, data.x_test[p], data.y_test[p]) for p in test_parts[:3]]
    n = [100, 30, 170]
    last = h.rounds[-1]
    assert last.fed_eval_accuracy == pytest.approx(sum(a * m for (_, a), m in zip(per, n)) / 300)
    assert last.fed_eval_loss == pytest.approx(sum(lo * m for (lo, _), m in zip(per, n)) / 300)
    with pytest.raises(ValueError, match="eval_partition has 2 clients, the partition 6"):
        run_fedavg(cfg, model, data, parts, eval_partition=test_parts[:2])
    with pytest.raises(ValueError, match="not both"):
        run_fedavg(FedAvgConfig(eval_holdout=0.2), model, data, parts,
                   eval_partition=test_parts)


def test_corrupt_or_foreign_payloads_are_rejected_by_name():
    model = logistic()
    codec = Codec(QuantizerConfig(4))
    flat = np.linspace(-1, 1, model.num_params, dtype=np.float32)
    payload, bits = encode_tensors(codec, model, flat, key=7)
    assert bits == 8 * len(payload)
    np.testing.assert_allclose(decode_tensors(payload, model, np.float32), flat, atol=2 / 15)
    with pytest.raises(ValueError):
        decode_tensors(payload[:-3], model, np.float32)  # truncated
    other, _ = encode_tensors(codec, mlp_2nn(), np.zeros(mlp_2nn().num_params, np.float32), 7)
    with pytest.raises(ValueError):
        decode_tensors(other, model, np.float32)  # another model's tensors
    with pytest.raises(ValueError, match="expected float64"):
        decode_tensors(payload, model, np.float64)
    with pytest.raises(ValueError, match="raw payload must be"):
        decode_tensors(flat[:-1], model, np.float32)
    with pytest.raises(TypeError, match="bytes or an ndarray"):
        decode_tensors("abc", model, np.float32)


def test_backend_field_is_validated_and_an_absent_backend_is_a_clear_error():
    with pytest.raises(ValueError, match="backend must be one of numpy, cupy"):
        FedAvgConfig(backend="tpu")
    if "cupy" in available_backends():
        pytest.skip("CuPy and a device are present; tests/test_gpu_fedavg.py covers the backend")
    with pytest.raises(ValueError, match="cupy"):
        run_fedavg(FedAvgConfig(backend="cupy"), logistic(), _data("float32"), _partition())
