"""`trainer.precision=auto`: the bf16 speed-up measurement and the choice made from it."""
from __future__ import annotations

import math

import pytest
import torch

from gcmae.models.gcmae import GCMAE
from gcmae.train import precision
from gcmae.train.precision import MIN_SPEEDUP, interleaved_speedup, measure_cpu_bf16_speedup, resolve_precision


def _fake_step(seconds):
    """A step timer that returns seconds(call number, bf16) instead of timing anything."""
    calls = []

    def step(bf16: bool) -> float:
        calls.append(bf16)
        return seconds(len(calls), bf16)

    return step, calls


def test_a_real_speed_up_is_measured_in_pairs_of_alternating_order():
    step, calls = _fake_step(lambda n, bf16: 0.5 if bf16 else 1.0)
    assert interleaved_speedup(step, repeats=4) == pytest.approx(2.0)
    # one warm-up pass of each, then pairs timed back to back, their order alternating
    assert calls == [False, True] + [False, True, True, False] * 2


def test_the_warm_up_pass_is_not_counted():
    step, _ = _fake_step(lambda n, bf16: 100.0 if n <= 2 else (0.8 if bf16 else 1.0))
    assert interleaved_speedup(step, repeats=1) == pytest.approx(1.25)


def test_one_slow_step_is_dropped_by_the_median():
    step, _ = _fake_step(lambda n, bf16: 10.0 if n == 6 else (0.8 if bf16 else 1.0))  # a bf16 step hit by a hiccup
    assert interleaved_speedup(step, repeats=5) == pytest.approx(1.25)


@pytest.mark.parametrize("change", range(13))
@pytest.mark.parametrize("arrives", [True, False])
def test_a_load_that_comes_or_goes_while_measuring_does_not_tip_the_ratio(change, arrives):
    # equal speed, but after call `change` another job doubles every step (or stops doing so): timing fp32 as a
    # block and then bf16 read 0.5x or 2x
    def seconds(n, bf16):
        return 2.0 if (n > change) == arrives else 1.0

    step, _ = _fake_step(seconds)
    assert interleaved_speedup(step, repeats=5) == pytest.approx(1.0)
    step, _ = _fake_step(lambda n, bf16: seconds(n, bf16) * (0.8 if bf16 else 1.0))
    assert interleaved_speedup(step, repeats=5) == pytest.approx(1.25)


def test_the_choice_follows_the_measured_speed_up(monkeypatch):
    model = GCMAE(num_data=2, encoder="vit_tiny", img_size=32, patch_size=8)
    assert resolve_precision("32-true", "cpu", model, 32).precision == "32-true"
    for measured, expected in [(MIN_SPEEDUP - 0.05, "32-true"), (MIN_SPEEDUP, "bf16-mixed"), (1.5, "bf16-mixed")]:
        monkeypatch.setattr(precision, "measure_cpu_bf16_speedup", lambda *a, **k: measured)
        choice = resolve_precision("auto", "cpu", model, 32)
        assert choice.precision == expected
        assert f"{measured:.2f}x fp32" in choice.reason and "thread(s)" in choice.reason


def test_measuring_leaves_the_model_and_the_global_rng_as_they_were():
    model = GCMAE(num_data=2, encoder="vit_tiny", img_size=32, patch_size=8, drop_path=0.1).eval()  # draws RNG
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    speedup = measure_cpu_bf16_speedup(model, 32, batch_size=2, repeats=1)
    assert math.isfinite(speedup) and speedup > 0
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
