"""The demo's summary text from its metrics (the run itself is `make demo`, too slow for the suite)."""
from gcmae.demo import _reading, _shipped_table


def _metrics() -> dict:
    knn = [{"model": m, "task": "PCam valid (tumour vs normal)", "pool": p, "accuracy": a}
           for m, p, a in (("gcmae", "cls", 0.78), ("gcmae", "mean", 0.77), ("random init", "cls", 0.75),
                           ("random init", "mean", 0.76))]
    shipped = [{"model": "enc", "pool": "cls", "encoder": 0.756, "random_init": [0.73, 0.72], "seeds": [0, 1],
                "margin": 0.031, "margin_se": 0.012, "z": 2.58}]
    return {"knn": knn, "shipped": shipped}


def test_reading_and_table_name_the_shipped_encoders_margin():
    metrics = _metrics()
    reading = _reading(metrics)
    assert "trained minus random init: +0.030 (cls), +0.010 (mean)" in reading
    assert ("Shipped enc, logistic probe minus the mean of 2 random inits on the same normalised images: "
            "+0.031 ± 0.012 (cls: 2.6 standard errors).") in reading
    assert "| enc | cls | 0.756 | 0.730, 0.720 | +0.031 ± 0.012 |" in _shipped_table(metrics)
    assert _shipped_table({"knn": metrics["knn"]}) == "" and "Shipped" not in _reading({"knn": metrics["knn"]})
