"""The TensorFlow Federated side of ``tests/test_validation_tff.py``: replay refsim's jobs in
TFF 0.87 and write what TFF computed.

Runs in TFF's own virtual environment (numpy, tensorflow, tensorflow_federated only; it never
imports refsim, whose venv never has TensorFlow):

    $REFSIM_TFF_PYTHON tests/tff_side/replay.py JOB_DIR

``JOB_DIR/job.json`` lists cases; every path in it is relative to JOB_DIR. Each case writes
``<out>.npz`` (arrays) and ``<out>.json`` (numbers) and the script prints one line per case.
TFF leaves a ``worker_binary`` process behind: run this script in a process group of its own
and end the group (the test does, with ``start_new_session=True`` and ``os.killpg``).

Case kinds (the fields each reads are in its function's docstring):

* ``fedavg``: refsim's trace (``trace/``: sampled clients, batch orders, learning rates) replayed
  by ``tff.learning.algorithms.build_weighted_fed_avg`` (or its ``_with_optimizer_schedule``
  variant) on a Keras model started from refsim's weights; optional ``build_fed_eval`` after
  every round.
* ``record_steps``: one client of one round, step by step: the Keras weights before and after
  every local SGD step, computed as TFF's client work computes them (``forward_pass`` under a
  ``GradientTape``, then ``build_sgdm.next``); optionally TFF's own one-client round beside it.
* ``robust_process``: ``tff.learning.robust_aggregator`` / ``compression_aggregator`` driven
  directly with given client values and weights, round after round (or many draws of one round).
* ``encoded_sizes``: the encoded tensors TFF's ``compression_aggregator`` encoders produce, in bits.
* ``quantizer_draws``: TFF's 8-bit uniform quantization stage, encoded and decoded many times.

Keras models match refsim's ``cnn_mnist``, ``mlp_2nn`` and ``logistic`` layer for layer (NHWC
input, logits out, ``SparseCategoricalCrossentropy(from_logits=True)``); weights travel in
Keras' ``get_weights()`` order as ``w0, w1, ...``.
"""

import collections.abc
import json
import math
import os
import sys
import time

import numpy as np
import tensorflow as tf
import tensorflow_federated as tff
from tensorflow_model_optimization.python.core.internal import tensor_encoding as te


# -- models and data ---------------------------------------------------------------------------

def keras_model(name, dtype):
    """refsim's model ``name`` in Keras, NHWC (N, 28, 28, 1) -> logits (N, 10), of ``dtype``."""
    L = tf.keras.layers
    inp = L.Input(shape=(28, 28, 1), dtype=dtype)
    if name == "cnn":
        h = L.Conv2D(32, 5, padding="same", activation="relu", dtype=dtype)(inp)
        h = L.MaxPooling2D(2, dtype=dtype)(h)
        h = L.Conv2D(64, 5, padding="same", activation="relu", dtype=dtype)(h)
        h = L.MaxPooling2D(2, dtype=dtype)(h)
        h = L.Flatten(dtype=dtype)(h)
        h = L.Dense(512, activation="relu", dtype=dtype)(h)
    elif name == "2nn":
        h = L.Flatten(dtype=dtype)(inp)
        h = L.Dense(200, activation="relu", dtype=dtype)(h)
        h = L.Dense(200, activation="relu", dtype=dtype)(h)
    elif name == "logistic":
        h = L.Flatten(dtype=dtype)(inp)
    else:
        raise ValueError(f"unknown model {name!r}")
    return tf.keras.Model(inp, L.Dense(10, dtype=dtype)(h))


def model_fn_for(name, dtype):
    spec = (tf.TensorSpec((None, 28, 28, 1), dtype), tf.TensorSpec((None,), tf.int64))

    def model_fn():
        return tff.learning.models.from_keras_model(
            keras_model(name, dtype), input_spec=spec,
            loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[tf.keras.metrics.SparseCategoricalAccuracy()])
    return model_fn


def load_weights(path):
    z = np.load(path)
    return [z[f"w{i}"] for i in range(len(z.files))]


def load_data(job_dir, case):
    z = np.load(os.path.join(job_dir, case["data"]))
    return z["x"].astype(case["dtype"]), z["y"].astype(np.int64)


def client_dataset(x, y, order, batch_size):
    """refsim's batches of one client: epoch e visits order[e] in slices of B (last partial)."""
    ds = None
    for idx in order:  # (n_k,) per epoch
        b = len(idx) if batch_size is None else batch_size
        de = tf.data.Dataset.from_tensor_slices((x[idx], y[idx])).batch(b)
        ds = de if ds is None else ds.concatenate(de)
    return ds


def trace_rounds(tdir):
    """(t, round json, round npz) for every round of a refsim trace directory."""
    t = 1
    while os.path.exists(os.path.join(tdir, f"round_{t:06d}.json")):
        with open(os.path.join(tdir, f"round_{t:06d}.json")) as f:
            rj = json.load(f)
        yield t, rj, np.load(os.path.join(tdir, f"round_{t:06d}.npz"))
        t += 1


def hparam(value, dtype_name):
    """A hyperparameter as TFF is given it: a Python float (TFF stores it as float32) or
    np.float64 (kept float64)."""
    if value is None:
        return None
    return float(value) if dtype_name == "python" else np.float64(value)


def server_optimizer(spec):
    kind, h = spec["kind"], (lambda k: hparam(spec.get(k), spec.get("hparam_dtype", "python")))
    if kind == "sgdm":
        return tff.learning.optimizers.build_sgdm(h("learning_rate"), momentum=h("momentum"))
    if kind == "adam":
        return tff.learning.optimizers.build_adam(h("learning_rate"), h("beta_1"), h("beta_2"),
                                                  h("epsilon"))
    if kind == "yogi":
        return tff.learning.optimizers.build_yogi(h("learning_rate"), h("beta_1"), h("beta_2"),
                                                  h("epsilon"),
                                                  h("initial_preconditioner_value"))
    if kind == "adagrad":
        return tff.learning.optimizers.build_adagrad(h("learning_rate"),
                                                     h("initial_preconditioner_value"),
                                                     h("epsilon"))
    raise ValueError(f"unknown server optimizer {kind!r}")


def plain(value):
    """TFF's metrics structure as JSON-ready Python (floats keep their float32 value)."""
    if isinstance(value, collections.abc.Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [plain(v) for v in value]
    arr = np.asarray(value)
    return arr.item() if arr.ndim == 0 else arr.tolist()


# -- case kinds --------------------------------------------------------------------------------

def run_fedavg(job_dir, case):
    """Fields: model, dtype, data, trace, init; server (``server_optimizer``'s spec, default
    ``build_sgdm(1.0)``); client_lr_dtype ("python" | "float64"); schedule (optional
    {"lr": l, "decay": d}: ``build_weighted_fed_avg_with_optimizer_schedule`` with
    lr(r) = l * d**r, r = 0, 1, ...; else each round's lr from the trace via set_hparams);
    aggregator ("mean" | "robust"); client (optional {"kind": "adam", "beta_1", "beta_2",
    "epsilon"}: ``build_adam`` as the client optimizer, else ``build_sgdm``); eval (optional {"data": npz of x, y, "parts": npz of
    client_<k>}: ``build_fed_eval`` after every round, one batch of up to 1000 per client)."""
    dt = case["dtype"]
    x, y = load_data(job_dir, case)
    tdir = os.path.join(job_dir, case["trace"])
    model_fn = model_fn_for(case["model"], dt)
    lr_dtype = case.get("client_lr_dtype", "python")
    server = (server_optimizer(case["server"]) if case.get("server")
              else tff.learning.optimizers.build_sgdm(1.0))
    aggregator = (tff.learning.robust_aggregator(zeroing=True, clipping=True, weighted=True)
                  if case.get("aggregator") == "robust" else None)
    if case.get("schedule"):
        lr0, decay = case["schedule"]["lr"], case["schedule"]["decay"]
        proc = tff.learning.algorithms.build_weighted_fed_avg_with_optimizer_schedule(
            model_fn, client_learning_rate_fn=lambda r: lr0 * decay ** tf.cast(r, tf.float32),
            client_optimizer_fn=tff.learning.optimizers.build_sgdm,
            server_optimizer_fn=server, model_aggregator=aggregator)
    elif case.get("client"):
        c = case["client"]
        proc = tff.learning.algorithms.build_weighted_fed_avg(
            model_fn, client_optimizer_fn=tff.learning.optimizers.build_adam(
                hparam(0.1, lr_dtype), beta_1=c["beta_1"], beta_2=c["beta_2"],
                epsilon=c["epsilon"]),
            server_optimizer_fn=server, model_aggregator=aggregator)
    else:
        proc = tff.learning.algorithms.build_weighted_fed_avg(
            model_fn, client_optimizer_fn=tff.learning.optimizers.build_sgdm(
                hparam(0.1, lr_dtype)),
            server_optimizer_fn=server, model_aggregator=aggregator)
    state = proc.initialize()
    w0 = load_weights(os.path.join(job_dir, case["init"]))
    state = proc.set_model_weights(
        state, tff.learning.models.ModelWeights(trainable=w0, non_trainable=[]))
    evaluator = None
    if case.get("eval"):
        evaluator = tff.learning.algorithms.build_fed_eval(model_fn)
        ez = np.load(os.path.join(job_dir, case["eval"]["data"]))
        ex, ey = ez["x"].astype(dt), ez["y"].astype(np.int64)
        pz = np.load(os.path.join(job_dir, case["eval"]["parts"]))
        eval_data = [tf.data.Dataset.from_tensor_slices((ex[pz[f"client_{k}"]],
                                                         ey[pz[f"client_{k}"]])).batch(1000)
                     for k in range(len(pz.files)) if len(pz[f"client_{k}"])]
    arrays, rounds = {}, []
    for t, rj, rz in trace_rounds(tdir):
        if not case.get("schedule"):
            hp = proc.get_hparams(state)
            hp["client_work"]["learning_rate"] = hparam(rj["lr"], lr_dtype)
            state = proc.set_hparams(state, hp)
        data = [client_dataset(x, y, rz[f"order_{k}"], rj["batch_size"]) for k in rj["clients"]]
        out = proc.next(state, data)
        state = out.state
        weights = proc.get_model_weights(state)
        for i, a in enumerate(weights.trainable):
            arrays[f"round_{t}/w{i}"] = np.asarray(a)
        row = {"round": t, "train": plain(out.metrics["client_work"]["train"]),
               "aggregator": plain(out.metrics["aggregator"])}
        if evaluator is not None:
            es = evaluator.set_model_weights(evaluator.initialize(), weights)
            row["eval"] = plain(evaluator.next(es, eval_data).metrics["client_work"]["eval"]
                                ["current_round_metrics"])
        rounds.append(row)
    return arrays, {"rounds": rounds}


def run_record_steps(job_dir, case):
    """Fields: model, dtype, data, trace, round, client, weights (the Keras weights the client
    received), check_with_tff (bool: also TFF's one-client round from those weights).
    Writes step_<j>/w<i> for j = 0 (received) .. S (after the last of the S local steps)."""
    dt = case["dtype"]
    x, y = load_data(job_dir, case)
    tdir = os.path.join(job_dir, case["trace"])
    rj = rz = None
    for t, rj, rz in trace_rounds(tdir):
        if t == case["round"]:
            break
    order, lr = rz[f"order_{case['client']}"], rj["lr"]
    w_in = load_weights(os.path.join(job_dir, case["weights"]))
    model = model_fn_for(case["model"], dt)()
    trainable = model.trainable_variables
    for v, a in zip(trainable, w_in):
        v.assign(a)
    opt = tff.learning.optimizers.build_sgdm(lr)  # a Python float, as TFF is usually given it
    opt_state = opt.initialize(tuple(tf.TensorSpec(v.shape, v.dtype) for v in trainable))
    arrays = {f"step_0/w{i}": np.asarray(a) for i, a in enumerate(w_in)}
    j = 0
    for xb, yb in client_dataset(x, y, order, rj["batch_size"]):
        with tf.GradientTape() as tape:
            output = model.forward_pass((xb, yb), training=True)
        grads = tape.gradient(output.loss, trainable)
        opt_state, new = opt.next(opt_state, tuple(trainable), tuple(grads))
        for v, a in zip(trainable, new):
            v.assign(a)
        j += 1
        for i, v in enumerate(trainable):
            arrays[f"step_{j}/w{i}"] = v.numpy()
    info = {"steps": j, "lr": lr}
    if case.get("check_with_tff"):
        proc = tff.learning.algorithms.build_weighted_fed_avg(
            model_fn_for(case["model"], dt),
            client_optimizer_fn=tff.learning.optimizers.build_sgdm(lr),
            server_optimizer_fn=tff.learning.optimizers.build_sgdm(1.0))
        state = proc.set_model_weights(proc.initialize(), tff.learning.models.ModelWeights(
            trainable=w_in, non_trainable=[]))
        out = proc.next(state, [client_dataset(x, y, order, rj["batch_size"])])
        for i, a in enumerate(proc.get_model_weights(out.state).trainable):
            arrays[f"tff_round/w{i}"] = np.asarray(a)
    return arrays, info


def run_robust_process(job_dir, case):
    """Fields: dtype, values (npz: r<r>/c<k>/t<i>), weights ([[w per client] per round]),
    shapes, variant ("robust" | "compression"), draws (optional: run round 0 that many times
    from the initial state and keep the mean and the sum of squares of the results)."""
    dt = np.dtype(case["dtype"]).type
    shapes = [tuple(s) for s in case["shapes"]]
    value_type = tff.types.StructWithPythonType(
        [tff.types.TensorType(dt, s) for s in shapes], tuple)
    factory = (tff.learning.compression_aggregator() if case["variant"] == "compression"
               else tff.learning.robust_aggregator(zeroing=True, clipping=True, weighted=True))
    proc = factory.create(value_type, tff.types.TensorType(np.float32))
    vz = np.load(os.path.join(job_dir, case["values"]))
    weights = case["weights"]

    def values(r):
        return [tuple(vz[f"r{r}/c{k}/t{i}"] for i in range(len(shapes)))
                for k in range(len(weights[r]))]

    arrays, info = {}, {"rounds": []}
    state = proc.initialize()
    if case.get("draws"):
        acc = [np.zeros(s) for s in shapes]
        acc2 = [np.zeros(s) for s in shapes]
        for _ in range(case["draws"]):
            res = proc.next(state, values(0), [np.float32(w) for w in weights[0]]).result
            for i, a in enumerate(res):
                acc[i] += np.asarray(a, np.float64)
                acc2[i] += np.asarray(a, np.float64) ** 2
        for i in range(len(shapes)):
            arrays[f"sum/t{i}"], arrays[f"sumsq/t{i}"] = acc[i], acc2[i]
        return arrays, {"draws": case["draws"]}
    for r in range(len(weights)):
        out = proc.next(state, values(r), [np.float32(w) for w in weights[r]])
        state = out.state
        for i, a in enumerate(out.result):
            arrays[f"r{r}/t{i}"] = np.asarray(a)
        m = out.measurements
        info["rounds"].append({
            "zeroing_norm": float(m["zeroing_norm"]), "zeroed_count": int(m["zeroed_count"]),
            "clipping_norm": float(m["zeroing"]["clipping_norm"]),
            "clipped_count": int(m["zeroing"]["clipped_count"]),
            "zeroing_estimate": float(state["zeroing_norm"][0].current_estimate),
            "clipping_estimate": float(
                state["inner_agg"]["clipping_norm"][0].current_estimate)})
    return arrays, info


def _flatten(value, path=""):
    """(path, tensor) pairs of a nested dict / list structure."""
    if isinstance(value, collections.abc.Mapping):
        for k, v in value.items():
            yield from _flatten(v, f"{path}/{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _flatten(v, f"{path}/{i}")
    else:
        yield path, value


def _encoded_bits(encoder, x):
    """Bits of what one client sends for x: the encoded tensors (their element counts times
    their dtype widths), from the encoder's own encode."""
    state = encoder.initial_state()
    encode_params, _, _ = encoder.get_params(state)
    encoded, _ = encoder.encode(tf.constant(x), encode_params)
    parts = {k: int(np.asarray(v).size) * tf.as_dtype(v.dtype).size * 8
             for k, v in _flatten(encoded)}
    return sum(parts.values()), parts


def run_encoded_sizes(job_dir, case):
    """Fields: items ([{"shape": [...], "bits": b}]), threshold. For each, the encoder that
    ``EncodedSumFactory.quantize_above_threshold(b, threshold)`` (``compression_aggregator``'s
    stage, b = 8) builds for a float32 tensor of that shape, and its encoded size."""
    rng = np.random.default_rng(0)
    out = []
    for item in case["items"]:
        factory = tff.aggregators.EncodedSumFactory.quantize_above_threshold(
            quantization_bits=item["bits"], threshold=case["threshold"])
        spec = tf.TensorSpec(item["shape"], tf.float32)
        encoder = factory._encoder_fn(spec)  # the encoder TFF builds for this tensor
        x = rng.normal(size=item["shape"]).astype(np.float32)
        total, parts = _encoded_bits(encoder, x)
        out.append({"shape": item["shape"], "bits": item["bits"], "encoded_bits": total,
                    "parts": parts})
    return {}, {"items": out}


def run_quantizer_draws(job_dir, case):
    """Fields: x (npz with x, float32 vector), draws R. TFF's uniform_quantization(8) (the
    stage compression_aggregator uses), encoded and decoded R times: per-element sum and sum of
    squares of the decoded values, one draw's quantized values, the encoded min and max."""
    x = np.load(os.path.join(job_dir, case["x"]))["x"]
    encoder = te.encoders.as_simple_encoder(te.encoders.uniform_quantization(bits=8),
                                            tf.TensorSpec(x.shape, tf.float32))
    state = encoder.initial_state()
    total = np.zeros(x.shape)
    total_sq = np.zeros(x.shape)
    arrays = {}
    for r in range(case["draws"]):
        encoded, _ = encoder.encode(tf.constant(x), state)
        decoded = np.asarray(encoder.decode(encoded), np.float64)
        total += decoded
        total_sq += decoded ** 2
        if r == 0:
            arrays["decoded_0"] = decoded
            flat = dict(_flatten(encoded))
            arrays["min_max"] = np.asarray(
                [np.asarray(v) for k, v in flat.items() if "min_max" in k][0])
    arrays["sum"], arrays["sumsq"] = total, total_sq
    return arrays, {"draws": case["draws"]}


def run_tf_float32(job_dir, case):
    """Fields: quantile ([{stage, m, below}]), sums ([[float32 ...]]), adam ({lr, beta_1,
    beta_2, steps}). TFF's own quantile processes (``model_update_aggregator``'s zeroing and
    clipping defaults) after one round with m records, ``below`` of them at the initial
    estimate and the rest at twice it; ``tf.reduce_sum`` of short float32 vectors in a graph;
    Adam's normalized learning rate as ``build_adam`` forms it, for t = 1..steps."""
    qe = tff.aggregators.PrivateQuantileEstimationProcess
    processes = {"zeroing": qe.no_noise(initial_estimate=10.0, target_quantile=0.98,
                                        learning_rate=math.log(10.0), multiplier=2.0,
                                        increment=1.0),
                 "clipping": qe.no_noise(initial_estimate=1.0, target_quantile=0.8,
                                         learning_rate=0.2)}
    initial = {"zeroing": 10.0, "clipping": 1.0}
    estimates = []
    for q in case["quantile"]:
        proc = processes[q["stage"]]
        c0 = np.float32(initial[q["stage"]])
        records = [c0] * q["below"] + [c0 * np.float32(2)] * (q["m"] - q["below"])
        state = proc.next(proc.initialize(), records)
        estimates.append(float(state[0].current_estimate))

    @tf.function
    def reduce_sum(v):
        return tf.reduce_sum(tf.stack(tf.unstack(v)))

    sums = [float(reduce_sum(tf.constant(np.asarray(v, np.float32)))) for v in case["sums"]]
    a = case["adam"]

    @tf.function
    def normalized_lr(step):
        lr, b1, b2 = (tf.constant(a[k], tf.float32) for k in ("lr", "beta_1", "beta_2"))
        t = tf.cast(step, tf.float32)
        return lr * tf.math.sqrt((1.0 - tf.math.pow(b2, t))) / (1.0 - tf.math.pow(b1, t))

    lrs = [float(normalized_lr(tf.constant(t))) for t in range(1, a["steps"] + 1)]
    return {}, {"estimates": estimates, "sums": sums, "adam_lr": lrs}


KINDS = {"fedavg": run_fedavg, "record_steps": run_record_steps,
         "robust_process": run_robust_process, "encoded_sizes": run_encoded_sizes,
         "quantizer_draws": run_quantizer_draws, "tf_float32": run_tf_float32}


def main(job_dir):
    with open(os.path.join(job_dir, "job.json")) as f:
        job = json.load(f)
    names = set(job.get("only") or [c["name"] for c in job["cases"]])
    for case in job["cases"]:
        if case["name"] not in names:
            continue
        start = time.perf_counter()
        arrays, info = KINDS[case["kind"]](job_dir, case)
        info["wall_s"] = time.perf_counter() - start
        out = os.path.join(job_dir, case["name"])
        np.savez(out + ".npz", **arrays)
        with open(out + ".json", "w") as f:
            json.dump(info, f)
        print(f"{case['name']}: {info['wall_s']:.1f} s", flush=True)
    print(f"tff {tff.__version__} tensorflow {tf.__version__} numpy {np.__version__} "
          f"python {sys.version.split()[0]}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
