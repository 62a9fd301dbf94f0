"""``refsim compare --curves``: the seed band of refsim.validation.curves (its formula against
a hand computation, inside and outside, the floor at one test example) and the CLI (reruns
kept and reused, a curve far off the band exits 1, bad curve files exit 2 with one line)."""

import math

import numpy as np
import pytest
from scipy import stats

from refsim.cli import main
from refsim.validation.curves import Curve, compare_curve, read_curve


def _curve(label, values, start=1):
    return Curve(label, tuple(range(start, start + len(values))), tuple(values))


def test_the_band_is_the_bonferroni_prediction_interval():
    refs = [_curve(f"s{i}", v) for i, v in enumerate(([0.5, 0.7, 0.80], [0.52, 0.71, 0.80],
                                                      [0.47, 0.69, 0.80], [0.51, 0.73, 0.80]))]
    c = compare_curve(_curve("cand", [0.55, 0.70, 0.805]), refs, num_test=100)
    q = stats.t.ppf(1 - 0.05 / (2 * 3), 3)
    assert c.quantile == pytest.approx(q)
    values = np.array([0.5, 0.52, 0.47, 0.51])
    half = q * values.std(ddof=1) * math.sqrt(1 + 1 / 4)
    assert c.rows[0].low == pytest.approx(values.mean() - half)
    assert c.rows[0].high == pytest.approx(values.mean() + half)
    assert c.rows[2].sd == 0 and c.rows[2].high - c.rows[2].mean == pytest.approx(0.01)
    assert c.inside  # 0.805 lies within one test example of the seeds' 0.80
    far = compare_curve(_curve("cand", [0.9, 0.70, 0.80]), refs, num_test=100)
    assert not far.inside and far.outside_rounds == (1,)
    d = far.to_dict()
    assert d["verdict"] == "outside" and d["rounds"][0]["inside"] is False


def test_only_shared_rounds_are_compared_and_bad_inputs_are_named():
    refs = [_curve(f"s{i}", [0.5 + i / 100, 0.6, 0.7]) for i in range(3)]
    c = compare_curve(_curve("cand", [0.6, 0.7], start=2), refs, num_test=10)
    assert [r.round for r in c.rows] == [2, 3]
    with pytest.raises(ValueError, match="at least 3 reference runs"):
        compare_curve(refs[0], refs[:2], 10)
    with pytest.raises(ValueError, match="shares no evaluated round"):
        compare_curve(_curve("cand", [0.5], start=9), refs, 10)


@pytest.mark.parametrize("text, message", [
    ("", "no rows"),
    ("epoch,acc\n1,0.5\n", "lacks 'round'"),
    ("round,test_accuracy\n1,x\n", "must be an integer and a number"),
    ("round,test_accuracy\n1,1.5\n", "not in [0, 1]"),
    ("round,test_accuracy\n1,0.5\n1,0.6\n", "appears twice"),
    ("round,test_accuracy\n1,\n", "no round has a test accuracy"),
])
def test_bad_curve_files_are_one_line(tmp_path, text, message):
    path = tmp_path / "c.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_curve(path)


def test_the_cli_reruns_the_job_keeps_the_reruns_and_flags_a_curve_off_the_band(tmp_path,
                                                                                 capsys):
    run = ["run", "--model", "2nn", "--partition", "iid", "--codec", "float", "--clients",
           "10", "--fraction", "0.3", "--rounds", "3", "--train-limit", "300", "--test-limit",
           "100", "--quiet", "--plot", "no"]
    assert main(run + ["--out", str(tmp_path / "ref")]) == 0
    job = tmp_path / "ref" / "iid-float"
    own = read_curve(job)
    off = tmp_path / "off.csv"
    off.write_text("round,test_accuracy\n" + "".join(
        f"{t},{min(1.0, a + 0.3):.4f}\n" for t, a in zip(own.rounds, own.accuracy)))
    capsys.readouterr()
    assert main(["compare", "--curves", str(off), str(job), "--seeds", "3"]) == 1
    out = capsys.readouterr().out
    assert "OUTSIDE" in out and "running iid-float with seed 2" in out
    assert sorted(p.name for p in (job / "seed_band").iterdir()) == [
        "seed_1.csv", "seed_1.json", "seed_2.csv", "seed_2.json"]
    # The job's own curve is inside its band; the reruns are reused.
    assert main(["compare", "--curves", str(job / "metrics.csv"), str(job), "--seeds",
                 "3"]) == 0
    out = capsys.readouterr().out
    assert "reusing" in out and "INSIDE" in out
    for args, message in ((["--seeds", "2"], "--seeds must be >= 3"),
                          ([], "no summary.json")):
        target = str(job) if args else str(tmp_path)
        assert main(["compare", "--curves", str(off), target, *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
