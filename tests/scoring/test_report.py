"""Evaluation outputs: metrics.json is valid JSON whatever the metrics hold."""
import json
import math

from gcmae.scoring.report import dumps_json, json_safe, save_evaluation


def test_nan_and_inf_are_written_as_null(tmp_path):
    """Issue 11 item 6: a NaN metric used to be written as the bare token NaN, which strict JSON readers refuse."""
    payload = {"auc": float("nan"), "rows": [1.0, float("inf"), -float("inf")], "nested": {"x": (0.5, math.nan)}}
    assert json_safe(payload) == {"auc": None, "rows": [1.0, None, None], "nested": {"x": [0.5, None]}}
    text = dumps_json(payload)
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda name: (_ for _ in ()).throw(ValueError(name)))
    save_evaluation(tmp_path, "knn", "t", {"k": [5]}, {}, {"loss": float("nan")})
    assert json.loads((tmp_path / "metrics.json").read_text())["loss"] is None
