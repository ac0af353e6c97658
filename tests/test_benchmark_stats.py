"""benchmarks/_stats.py: the curve statistics every benchmark reports (area, time to target, paired intervals),
checked against direct float64 computations."""

import pytest


@pytest.fixture(scope="module")
def stats(load_benchmark):
    return load_benchmark("_stats")


CURVE = [{"step": 0, "seconds": 0.0, "score": 0.2}, {"step": 10, "seconds": 4.0, "score": 0.5},
         {"step": 30, "seconds": 12.0, "score": 0.6}, {"step": 40, "seconds": 20.0, "score": 0.55}]


def test_area_is_the_mean_score_along_the_steps(stats):
    expected = (10 * 0.35 + 20 * 0.55 + 10 * 0.575) / 40
    assert stats.auc(CURVE) == pytest.approx(expected, abs=1e-12)
    assert stats.auc([{"step": 5, "knn": 0.7}], key="knn") == 0.7  # one point: its own value


def test_time_to_target_interpolates_between_evaluations(stats):
    assert stats.reach(CURVE, 0.55, "step") == pytest.approx(20.0)  # half-way from 0.5 (step 10) to 0.6 (step 30)
    assert stats.reach(CURVE, 0.55, "seconds") == pytest.approx(8.0)
    assert stats.reach(CURVE, 0.1, "step") == 0  # already there at the start
    assert stats.reach(CURVE, 0.61, "step") is None  # never reached


def test_the_paired_interval_is_students_t_and_drops_missing_values(stats):
    from scipy import stats as st

    values = [0.01, -0.004, 0.02, 0.006, None, float("nan")]
    out = stats.t_interval(values)
    clean = [0.01, -0.004, 0.02, 0.006]
    low, high = st.t.interval(0.95, 3, loc=sum(clean) / 4, scale=st.sem(clean))
    assert out["n"] == 4 and out["mean"] == pytest.approx(sum(clean) / 4)
    assert out["ci95"] == pytest.approx([low, high], abs=1e-12)
    assert stats.t_interval([0.3]) == {"mean": pytest.approx(0.3), "ci95": None, "n": 1}
    assert stats.t_interval([]) == {"mean": None, "ci95": None, "n": 0}
