"""AdaLoRA's rank allocator alone, on hand-made tensors: the cubic budget schedule (Sec. 3.3), the sensitivity and
uncertainty EMAs and the triplet scores (Sec. 3.2) against hand computations, the mask to a budget, the phases of
``update_and_allocate`` and the checkpoint's state names."""
import pytest
import torch

from dynrank.methods.adalora_allocator import BudgetSchedule, RankAllocator, shape_groups

R, R0 = 2, 3  # runs, initial rank
D_IN, D_OUT = (5, 7, 5), (4, 4, 6)  # three modules: Q (R, r0, d_in), P (R, d_out, r0)


def _schedule(**over):
    kw = dict(total_steps=40, tinit=6, tfinal=20, deltaT=3, init_bgt=3 * R0, target_bgt=3 * 2)
    return BudgetSchedule(**{**kw, **over})


def _allocator(seed=0, **over):
    g = torch.Generator().manual_seed(seed)
    Q = [torch.randn(R, R0, d, generator=g).requires_grad_() for d in D_IN]
    E = [torch.randn(R, R0, 1, generator=g).requires_grad_() for _ in D_IN]
    P = [torch.randn(R, d, R0, generator=g).requires_grad_() for d in D_OUT]
    return RankAllocator(_schedule(**over), Q, E, P, beta1=0.85, beta2=0.7), Q, E, P


def _set_grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


def test_budget_schedule_values_at_given_steps():
    s = _schedule(total_steps=40, tinit=6, tfinal=20, deltaT=3, init_bgt=12, target_bgt=8)
    assert [s(t) for t in (0, 5, 6)] == [(12, False)] * 3  # warm-up: the initial budget, no masking
    # b(t) = int((12 - 8) (1 - (t - 6) / 14)^3 + 8)
    assert s(7) == (int(4 * (13 / 14) ** 3 + 8), False) == (11, False)
    assert s(9) == (9, True) and s(12) == (8, True) and s(13) == (8, False)  # (11/14)^3 * 4 = 1.94; (1/2)^3 * 4 = 0.5
    assert s(20) == (8, False) and s(21) == (8, True) and s(39) == (8, True) and s.boundary == 20


def test_shape_groups_by_size():
    ts = [torch.zeros(1, 3, d) for d in (5, 7, 5, 2)]
    assert shape_groups(ts, 2) == [(2, [3]), (5, [0, 2]), (7, [1])]


def test_importance_emas_and_scores_against_hand_computation():
    a, Q, E, P = _allocator()
    assert len(a.params) == 9 and a.params[3:6] == E  # Q by d_in group (5: modules 0, 2; 7: module 1), E, P by d_out
    assert [id(p) for p in a.params[:3]] == [id(Q[0]), id(Q[2]), id(Q[1])]
    hand_ipt = [torch.zeros_like(p) for p in a.params]
    hand_unc = [torch.zeros_like(p) for p in a.params]
    for seed in (1, 2):
        _set_grads(a.params, seed)
        a.update_importance()
        for i, p in enumerate(a.params):
            I = (p.detach() * p.grad).abs()
            hand_ipt[i] = 0.85 * hand_ipt[i] + 0.15 * I
            hand_unc[i] = 0.7 * hand_unc[i] + 0.3 * (I - hand_ipt[i]).abs()
    for i in range(9):
        torch.testing.assert_close(a.ema["ipt"][i], hand_ipt[i], rtol=1e-6, atol=1e-8)
        torch.testing.assert_close(a.ema["unc"][i], hand_unc[i], rtol=1e-6, atol=1e-8)
    where = {id(p): i for i, p in enumerate(a.params)}
    s = {id(p): hand_ipt[i] * hand_unc[i] for i, p in enumerate(a.params)}
    hand = torch.stack([s[id(E[m])].squeeze(-1) + (s[id(Q[m])].mean(2) + s[id(P[m])].mean(1)) for m in range(3)])
    torch.testing.assert_close(a.scores(), hand, rtol=1e-6, atol=1e-9)  # (n, R, r0)
    assert a.ema["ipt"][where[id(Q[1])]].data_ptr() == a.bank["ipt_A7"][0].data_ptr()  # views into the banks


def test_mask_to_budget_keeps_the_top_b_triplets_of_each_run():
    a, Q, E, P = _allocator()
    _set_grads(a.params, 3)
    a.update_importance()
    s = a.scores()  # (3 modules, R, r0): 9 triplets per run
    a.mask_to_budget(4)  # keep 4 of 9 in each run
    for k in range(R):
        top = set(s[:, k].flatten().topk(4).indices.tolist())
        kept = a.keep[:, k].flatten()
        assert {i for i in range(9) if kept[i]} == top
        assert sum(a.ranks(k)) == 4
        lam = torch.stack([e[k].flatten() for e in E]).flatten()
        assert all((lam[i] == 0) == (i not in top) for i in range(9))  # lambda := 0 for the rest
    before = [e.detach().clone() for e in E]
    keep = a.keep.clone()
    a.mask_to_budget(9)  # k = 0: nothing to mask (PEFT's kthvalue would fail)
    assert torch.equal(a.keep, keep) and all(torch.equal(e, b) for e, b in zip(E, before))


def test_update_and_allocate_phases():
    a, Q, E, P = _allocator(total_steps=12, tinit=2, tfinal=6, deltaT=2)  # boundary 6
    for step in range(6):
        _set_grads(a.params, 10 + step)
        a.update_and_allocate(step)
        budget, mask_ind = a.schedule(step)
        if mask_ind:  # steps 4 (b = int(3 * (1/2)^3 + 6) = 6) masks; 3, 5 only update the EMAs
            assert [sum(a.ranks(k)) for k in range(R)] == [budget] * R, step
        assert not a.is_fixed()
    assert a.schedule(4) == (6, True) and a.schedule(3)[1] is False and a.bank["ipt_E"].abs().sum() > 0
    a.update_and_allocate(6)  # the final pattern at the target budget; the EMAs reset
    assert a.is_fixed() and [sum(a.ranks(k)) for k in range(R)] == [6, 6]
    assert all(float(v.abs().sum()) == 0 for v in a.bank.values())
    with torch.no_grad():
        for e in E:
            e.fill_(1.0)  # the gradient moved the masked lambdas
    a.update_and_allocate(7)  # re-applied after every later step
    assert torch.equal(torch.stack(E).squeeze(-1), a.keep.squeeze(-1))


def test_state_names_and_round_trip():
    a, *_ = _allocator()
    _set_grads(a.params, 4)
    a.update_importance()
    a.mask_to_budget(5)
    st = a.state(1)
    assert sorted(st) == sorted(["ema.ipt_E", "ema.ipt_A5", "ema.ipt_A7", "ema.ipt_B4", "ema.ipt_B6", "ema.unc_E",
                                 "ema.unc_A5", "ema.unc_A7", "ema.unc_B4", "ema.unc_B6", "keep", "fixed"])
    assert st["ema.ipt_A5"].shape == (2, R0, 5) and st["keep"].shape == (3, R0, 1)  # run 1's slice, module first
    b, *_ = _allocator(seed=9)
    b.load(1, {n: v.clone() for n, v in st.items()})
    assert all(torch.equal(b.bank[n][:, 1], a.bank[n][:, 1]) for n in a.bank)
    assert torch.equal(b.keep[:, 1], a.keep[:, 1]) and b.ranks(1) == a.ranks(1)
    assert torch.equal(b.keep[:, 0], torch.ones(3, R0, 1))  # run 0 untouched
    assert b.ranks(0) == [R0] * 3 and sum(a.ranks(1)) == 5


@pytest.mark.parametrize("budget", [9, 12])
def test_no_masking_when_the_budget_is_the_initial_one(budget):
    a, *_ = _allocator()
    _set_grads(a.params, 5)
    a.update_importance()
    a.mask_to_budget(budget)
    assert a.ranks(0) == a.ranks(1) == [R0] * 3
