"""Linear probes: the fast one separates separable features and is at chance on shuffled labels; the paper
protocol's LARS step is MAE's formula."""
import numpy as np
import pytest
import torch

from gcmae.evaluate.linprobe_paper import LARS_MOMENTUM, LARS_TRUST, LinearProbe, build_lars
from gcmae.scoring.probe import fit_logistic_probe, probe_probabilities


def blobs(n_per_class: int, num_classes: int, dim: int, seed: int, noise_seed: int):
    """Unit Gaussian clusters around centres ~8 standard deviations apart (linearly separable); `seed` picks
    the centres, `noise_seed` the samples, so (seed, 1) and (seed, 2) are independent draws of one problem."""
    centres = np.random.default_rng(seed).normal(size=(num_classes, dim)) * 8.0
    labels = np.repeat(np.arange(num_classes), n_per_class)
    return centres[labels] + np.random.default_rng(noise_seed).normal(size=(len(labels), dim)), labels


def test_probe_fits_linearly_separable_features():
    x, y = blobs(100, 3, 16, seed=0, noise_seed=1)
    x_val, y_val = blobs(100, 3, 16, seed=0, noise_seed=2)
    clf, converged = fit_logistic_probe(x, y)
    probs = probe_probabilities(clf, x_val, 3)
    assert converged and probs.shape == (300, 3) and np.allclose(probs.sum(1), 1)
    assert (probs.argmax(1) == y_val).mean() >= 0.99


def linear_rule(n: int, w: np.ndarray, seed: int):
    """Isotropic Gaussian features labelled by the side of a hyperplane."""
    x = np.random.default_rng(seed).normal(size=(n, len(w)))
    return x, (x @ w > 0).astype(int)


def test_probe_is_at_chance_on_shuffled_labels():
    w = np.random.default_rng(10).normal(size=128)
    x, y = linear_rule(1000, w, seed=11)
    x_val, y_val = linear_rule(1000, w, seed=12)
    real = probe_probabilities(fit_logistic_probe(x, y)[0], x_val, 2).argmax(1)
    assert (real == y_val).mean() >= 0.9  # the labels are learnable ...
    shuffled = np.random.default_rng(13).permutation(y)
    chance = probe_probabilities(fit_logistic_probe(x, shuffled)[0], x_val, 2).argmax(1)
    assert 0.4 <= (chance == y_val).mean() <= 0.6  # ... but not from shuffled ones


def test_probabilities_of_classes_missing_from_training_are_zero():
    x, y = blobs(20, 3, 4, seed=5, noise_seed=6)
    keep = y != 1
    clf, _ = fit_logistic_probe(x[keep], y[keep])
    probs = probe_probabilities(clf, x, 3)
    assert np.all(probs[:, 1] == 0) and np.allclose(probs.sum(1), 1)


def test_one_class_is_an_error():
    with pytest.raises(ValueError, match="at least two classes"):
        fit_logistic_probe(np.zeros((4, 2)), np.zeros(4))


def test_head_is_maes():
    probe = LinearProbe(64, 5)
    assert not probe.norm.affine and probe.norm.eps == 1e-6
    assert probe.head.bias.abs().sum() == 0 and probe.head.weight.std() < 0.02


def mae_lars_step(p, grad, buf, lr, weight_decay):
    """MAE's util/lars.py for one parameter: adapt + decay only matrices, then momentum SGD."""
    d = grad.clone()
    if p.ndim > 1:
        d = d + weight_decay * p
        q = LARS_TRUST * p.norm() / d.norm() if p.norm() > 0 and d.norm() > 0 else torch.tensor(1.0)
        d = d * q
    buf = d if buf is None else buf * LARS_MOMENTUM + d
    return p - lr * buf, buf


def test_lars_matches_maes_update():
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 3)
    ref_w, ref_b = head.weight.detach().clone(), head.bias.detach().clone()
    opt = build_lars(head, lr=0.3)
    bufs = [None, None]
    for _ in range(3):
        grads = torch.randn(3, 6), torch.randn(3)
        head.weight.grad, head.bias.grad = grads[0].clone(), grads[1].clone()
        opt.step()
        ref_w, bufs[0] = mae_lars_step(ref_w, grads[0], bufs[0], 0.3, 0.0)
        ref_b, bufs[1] = mae_lars_step(ref_b, grads[1], bufs[1], 0.3, 0.0)
    assert torch.allclose(head.weight, ref_w, atol=1e-6) and torch.allclose(head.bias, ref_b, atol=1e-6)
