import math

import pytest
import torch
import torch.nn.functional as F

from gcmae.models.memory_bank import MemoryBank


def make_bank(n=50, d=8, k=10, negatives="per_sample", seed=0):
    torch.manual_seed(seed)
    return MemoryBank(n, d, num_negatives=k, temperature=0.07, momentum=0.5, negatives=negatives)


def test_init_is_npid_uniform_and_k_is_capped():
    bank = make_bank(n=20, d=12, k=8192)
    stdv = 1 / math.sqrt(12 / 3)
    assert bank.memory.abs().max() <= stdv
    assert bank.num_negatives == 20
    assert bank.z.item() < 0


@pytest.mark.parametrize("negatives", ["per_sample", "shared"])
def test_scores_and_z_match_reference(negatives):
    bank = make_bank(negatives=negatives)
    memory = bank.memory.clone()
    feats = F.normalize(torch.randn(4, 8), dim=1)
    idx = torch.tensor([3, 7, 11, 40])
    neg = bank.sample_negatives(4, torch.Generator().manual_seed(5))
    assert neg.shape == ((4, 10) if negatives == "per_sample" else (10,))
    probs = bank.scores(feats, idx, neg)
    # reference: explicit loops over samples and candidates
    raw = []
    for i in range(4):
        cands = [idx[i].item()] + (neg[i] if neg.dim() == 2 else neg).tolist()
        raw.append([math.exp(float(memory[j] @ feats[i]) / 0.07) for j in cands])
    z = sum(map(sum, raw)) / (4 * 11) * 50  # mean over the first batch times N
    assert math.isclose(bank.z.item(), z, rel_tol=1e-4)
    assert torch.allclose(probs, torch.tensor(raw) / z, rtol=1e-4)


def test_z_is_estimated_once():
    bank = make_bank()
    feats = F.normalize(torch.randn(4, 8), dim=1)
    idx = torch.arange(4)
    bank.scores(feats, idx, bank.sample_negatives(4, torch.Generator().manual_seed(0)))
    z = bank.z.item()
    bank.scores(feats * 0 + F.normalize(torch.ones(1, 8), dim=1), idx,
                bank.sample_negatives(4, torch.Generator().manual_seed(1)))
    assert bank.z.item() == z


def test_update_is_momentum_then_renormalise():
    bank = make_bank()
    before = bank.memory.clone()
    feats = F.normalize(torch.randn(3, 8), dim=1)
    idx = torch.tensor([2, 9, 30])
    bank.update(feats, idx)
    assert torch.equal(bank.memory, before)  # deferred: the step's backward may still need the old bank
    bank.flush()
    for row, i in enumerate(idx.tolist()):
        mixed = [0.5 * a + 0.5 * b for a, b in zip(before[i].tolist(), feats[row].tolist())]
        norm = math.sqrt(sum(v * v for v in mixed))
        assert torch.allclose(bank.memory[i], torch.tensor([v / norm for v in mixed]), atol=1e-6)
    untouched = [j for j in range(50) if j not in idx.tolist()]
    assert torch.equal(bank.memory[untouched], before[untouched])


def test_negatives_are_the_rank_slice_of_the_global_draw():
    bank = make_bank()
    full = bank.sample_negatives(6, torch.Generator().manual_seed(3), rank=0, world_size=1)
    half0 = bank.sample_negatives(3, torch.Generator().manual_seed(3), rank=0, world_size=2)
    half1 = bank.sample_negatives(3, torch.Generator().manual_seed(3), rank=1, world_size=2)
    assert torch.equal(torch.cat([half0, half1]), full)


def test_bank_state_round_trips_through_state_dict():
    bank = make_bank()
    bank.scores(F.normalize(torch.randn(2, 8), dim=1), torch.tensor([0, 1]),
                bank.sample_negatives(2, torch.Generator().manual_seed(0)))
    other = make_bank(seed=1)
    other.load_state_dict(bank.state_dict())
    assert torch.equal(other.memory, bank.memory) and other.z.item() == bank.z.item()


def test_dense_and_gathered_per_sample_scores_agree(monkeypatch):
    import gcmae.models.memory_bank as mb

    feats = F.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    idx = torch.tensor([1, 2, 3, 4])
    results = []
    for limit in (2**26, 0):  # dense path, then the (B, K, D) gather path
        monkeypatch.setattr(mb, "_DENSE_SCORES_MAX", limit)
        bank = make_bank()
        probs = bank.scores(feats, idx, bank.sample_negatives(4, torch.Generator().manual_seed(2)))
        (grad,) = torch.autograd.grad(probs.log().sum(), feats)
        results.append((probs.detach(), grad))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-5)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)


def test_loaded_z_is_used_without_re_estimation():
    bank = make_bank()
    state = bank.state_dict()
    state["z"] = torch.tensor(123.0)
    bank.load_state_dict(state)
    feats = F.normalize(torch.randn(2, 8), dim=1)
    probs = bank.scores(feats, torch.tensor([0, 1]), bank.sample_negatives(2, torch.Generator().manual_seed(0)))
    assert bank.z.item() == 123.0
    raw = torch.exp((bank.memory[0] @ feats[0]) / 0.07)
    assert torch.isclose(probs[0, 0], raw / 123.0, rtol=1e-5)


def test_state_dict_includes_the_pending_update():
    bank = make_bank()
    feats = F.normalize(torch.randn(2, 8), dim=1)
    bank.update(feats, torch.tensor([4, 5]))
    saved = bank.state_dict()["memory"]
    assert torch.allclose(saved[4].norm(), torch.tensor(1.0)) and torch.equal(saved, bank.memory)
