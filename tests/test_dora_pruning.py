"""DoRA's pruning objects alone, on hand-made tensors: the budget schedule (Eq. 9), importance (Eq. 7) and its EMA
(Eq. 8), the mask (Eq. 9) and DEM (Eq. 10) against hand computations."""
import pytest
import torch

from dynrank.methods.dora_pruning import BudgetSchedule, ComponentMask, ImportanceEMA, component_importance, dem


def _schedule(T=200, interval=5, N=72, r0=6, r=2):
    return BudgetSchedule(total_steps=T, warmup_frac=0.15, final_frac=0.5, interval=interval, n_components=N, r0=r0,
                          r=r)


def test_budget_schedule_values_at_given_steps():
    s = _schedule()  # warm-up 30 steps, pruning over P = 70, then fixed
    assert [s(t) for t in (1, 30, 31, 65, 100, 101)] == [(-29, 70), (0, 70), (1, 70), (35, 70), (70, 70), (71, 70)]
    assert [s.phase(t) for t in (1, 29, 30, 31, 35, 36, 99, 100, 101, 200)] == [
        "ema", "ema", "prune", "ema", "prune", "ema", "ema", "prune", "fixed", "fixed"]
    assert s.end_step() == 100 and s.pruning(100) and not s.pruning(101) and s.pruning(1)
    # p = 35 of 70: (4 / 6) * (1 / 2)^3 = 1 / 12 of 72 components
    assert s.pruned_fraction(65) == pytest.approx(1 / 12) and s.n_pruned(65) == 6 and s.budget(65) == 66
    assert s.pruned_fraction(10) == 0 and s.budget(10) == 72  # warm-up: nothing
    assert s.pruned_fraction(150) == pytest.approx(4 / 6) and s.budget(150) == 24  # N r / r0 after P
    assert s.n_pruned(31) == int(72 * (4 / 6) * (1 / 70) ** 3) == 0  # the mask still prunes max(k, 1)
    short = _schedule(T=20, interval=4)  # P = 7, not a multiple of 4: the step with p = P prunes anyway
    assert [short.phase(t) for t in range(3, 12)] == ["prune", "ema", "ema", "ema", "prune", "ema", "ema", "prune",
                                                      "fixed"]


def test_budget_schedule_without_a_pruning_window_prunes_all_at_once():
    s = BudgetSchedule(total_steps=3, warmup_frac=0.15, final_frac=0.5, interval=2, n_components=12, r0=3, r=2)
    assert s(1) == (0, 1) and s(2) == (1, 1) and s.end_step() == 2
    s0 = BudgetSchedule(total_steps=2, warmup_frac=0.15, final_frac=0.5, interval=2, n_components=12, r0=3, r=2)
    assert s0(1)[1] == 0 and s0.pruned_fraction(1) == pytest.approx(1 / 3) and s0.budget(1) == 8


def _factors(R=2, G=3, r0=4, d_in=5, d_out=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(R, G, r0, d_in, generator=g), torch.randn(R, G, d_out, r0, generator=g),
            torch.randn(R, G, r0, generator=g))


def _hand_importance(A, B, c, eps=1e-8):
    """s_i = ||c_i B_i A_i||_F / (||sum_j c_j B_j A_j||_F + eps) with every matrix formed, in float64."""
    A, B, c = A.double(), B.double(), c.double()
    out = torch.zeros(c.shape, dtype=torch.float64)
    for k in range(c.shape[0]):
        for g in range(c.shape[1]):
            comps = [c[k, g, i] * torch.outer(B[k, g, :, i], A[k, g, i]) for i in range(c.shape[2])]
            total = torch.linalg.norm(sum(comps))
            out[k, g] = torch.stack([torch.linalg.norm(m) / (total + eps) for m in comps])
    return out.flatten(1).float()


def test_component_importance_equals_the_formed_matrices():
    A, B, c = _factors()
    c[1, 2, 0] = 0.0  # a pruned component scores 0
    s = component_importance(A, B, c, 1e-8)
    assert s.shape == (2, 3 * 4)
    torch.testing.assert_close(s, _hand_importance(A, B, c), rtol=1e-5, atol=1e-7)
    assert s[1, 8] == 0


def test_importance_ema_update_against_hand_computation():
    groups = [_factors(G=2, d_in=5, d_out=7, seed=1), _factors(G=1, d_in=6, d_out=3, seed=2)]  # N = 3 * 4
    ema = ImportanceEMA(runs=2, n_components=12, beta=0.8, eps=1e-8)
    assert torch.equal(ema.ema, torch.zeros(2, 12))
    s1 = torch.cat([_hand_importance(*g) for g in groups], 1)
    ema.update(groups)
    torch.testing.assert_close(ema.ema, 0.2 * s1, rtol=1e-5, atol=1e-8)
    with torch.no_grad():
        groups[0][2].mul_(-3.0)  # new c in the first group
    s2 = torch.cat([_hand_importance(*g) for g in groups], 1)
    ema.update(groups)
    torch.testing.assert_close(ema.ema, 0.8 * 0.2 * s1 + 0.2 * s2, rtol=1e-5, atol=1e-8)
    again = ImportanceEMA(2, 12, 0.8, 1e-8, ema=ema.ema)  # a resumed run starts from the saved S
    assert torch.equal(again.ema, ema.ema) and again.ema.data_ptr() != ema.ema.data_ptr()


def test_mask_keeps_the_top_b_components_of_each_run():
    S = torch.tensor([[0.5, 0.1, 0.9, 0.3, 0.7, 0.2], [0.6, 0.8, 0.05, 0.4, 0.15, 0.95]])
    m = ComponentMask(runs=2, n_modules=2, r0=3)
    kidx, keep = m.kidx.data_ptr(), m.keep.data_ptr()
    m.set_k(2)
    m.select(S)
    assert m.mask.tolist() == [[False, True, False, False, False, True], [False, False, True, False, True, False]]
    assert torch.equal(m.keep, (~m.mask).float()) and m.surviving(0) == [2, 2] and m.surviving(1) == [2, 2]
    m.set_k(0)  # k = 0 still thresholds at the smallest (the code's max(k, 1))
    m.select(S)
    assert m.mask.sum(1).tolist() == [1, 1] and m.mask[0, 1] and m.mask[1, 2]
    m.set_k(4)
    m.select(S)
    assert m.surviving(0) == [1, 1] and (S * m.keep).topk(2).values.tolist() == S.topk(2).values.tolist()
    assert (m.kidx.data_ptr(), m.keep.data_ptr()) == (kidx, keep)  # in place: a CUDA graph replays it
    c = [torch.ones(2, 3), torch.full((2, 3), 2.0)]  # module 0's and module 1's c
    m.apply(c)
    assert c[0].tolist() == [[0, 0, 1], [0, 1, 0]] and c[1].tolist() == [[0, 2, 0], [0, 0, 2]]
    loaded = ComponentMask(2, 2, 3, mask=m.mask.to(torch.uint8))  # a checkpoint's mask
    assert torch.equal(loaded.mask, m.mask) and torch.equal(loaded.keep, m.keep)
    loaded.load(torch.zeros(2, 6, dtype=torch.uint8))
    assert loaded.keep.sum() == 12


def test_dem_equals_unbiased_variances_over_modules():
    A1, B1, _ = _factors(G=2, r0=3, d_in=4, d_out=5, seed=3)
    A2, B2, _ = _factors(G=1, r0=3, d_in=6, d_out=2, seed=4)
    got = dem([(A1, B1), (A2, B2)], n_modules=3, r0=3)
    for k in range(2):
        hand = 0.0
        for A, B in ((A1, B1), (A2, B2)):
            for g in range(A.shape[1]):
                for i in range(3):
                    a, b = A[k, g, i].double(), B[k, g, :, i].double()
                    hand += float(((a - a.mean()) ** 2).sum() / (a.numel() - 1)
                                  + ((b - b.mean()) ** 2).sum() / (b.numel() - 1))
        assert float(got[k]) == pytest.approx(hand / (3 * 2 * 3), rel=1e-6)
    same = torch.ones(2, 1, 3, 4), torch.full((2, 1, 5, 3), 7.0)  # constant rows and columns: no spread
    assert dem([same], 1, 3).tolist() == [0.0, 0.0]
