"""Hidden-state schemes: each gives the intended initial state; no gradient crosses a window boundary."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from longssm.config import SCHEMES, ModelConfig, StateConfig
from longssm.data.streams import StreamLoader
from longssm.models import build_model
from longssm.train.schemes import StateSchemes, derangement

B = 6


def template() -> dict[str, torch.Tensor]:
    return {"layers.0.conv": torch.zeros(B, 8, 3), "layers.0.ssm": torch.zeros(B, 8, 4),
            "layers.1.h": torch.zeros(B, 5)}


def loader(doc_starts=None) -> StreamLoader:
    return StreamLoader(np.arange(B * 41), batch_size=B, seq_len=4, doc_starts=doc_starts)


def finals(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) for k, v in template().items()}


def schemes(**kw) -> StateSchemes:
    """The pure scheme (p_zero 0 unless given: the default adds zero starts to previous)."""
    return StateSchemes(StateConfig(**{"p_zero": 0.0, **kw}), template(), seed=0)


def test_default_recipe_is_previous_with_one_zero_start_in_ten():
    assert StateConfig().scheme == "previous" and StateConfig().zero_start_probability == 0.1
    assert StateConfig(scheme="state_passing").zero_start_probability == 0.0  # interventions stay pure
    assert StateConfig(scheme="previous", p_zero=0.0).zero_start_probability == 0.0
    n = 20000
    s = StateSchemes(StateConfig(), {"x": torch.zeros(n, 2)}, seed=0)
    s.observe({"x": torch.ones(n, 2)})
    zero_rows = (s.initial(StreamLoader(np.arange(n * 4), n, 1).batch(1))["x"] == 0).all(1).float().mean().item()
    assert abs(zero_rows - 0.1) < 0.01  # 3 standard deviations of the binomial are 0.0064


def test_zero_always_starts_from_zeros():
    s, data = schemes(scheme="zero"), loader()
    s.observe(finals(1))
    init = s.initial(data.batch(1))
    assert all((v == 0).all() for v in init.values())


def test_previous_is_the_last_final_state_of_the_same_row():
    s, data = schemes(scheme="previous"), loader()
    assert all((v == 0).all() for v in s.initial(data.batch(0)).values())  # nothing carried yet
    f = finals(1)
    s.observe(f)
    init = s.initial(data.batch(1))
    for k in f:
        assert torch.equal(init[k], f[k])


def test_previous_resets_every_row_at_the_wrap_and_only_marked_rows_at_documents():
    data = loader(doc_starts=np.array([0, 41 * 2 + 3]))  # a document starts inside stream 2, window 0
    s = schemes(scheme="previous", reset="document")
    s.observe(finals(1))
    init = s.initial(data.batch(1))
    for k, v in init.items():
        assert (v[2] == 0).all()
        others = [r for r in range(B) if r != 2]
        assert torch.equal(v[others], finals(1)[k][others])
    s.observe(finals(2))
    init = s.initial(data.batch(len(data)))  # first window of epoch 2
    assert all((v == 0).all() for v in init.values())
    s2 = schemes(scheme="previous", reset="wrap")  # documents ignored by default
    s2.observe(finals(1))
    assert torch.equal(s2.initial(data.batch(1))["layers.0.ssm"], finals(1)["layers.0.ssm"])


def test_state_passing_gives_each_row_a_final_state_of_another_row():
    s, data = schemes(scheme="state_passing"), loader()
    f = finals(3)
    s.observe(f)
    for step in range(1, 20):
        init = s.initial(data.batch(step))
        src = [int(torch.nonzero((f["layers.1.h"] == init["layers.1.h"][b]).all(dim=1))[0]) for b in range(B)]
        assert sorted(src) == list(range(B))  # a permutation of the rows
        assert all(src[b] != b for b in range(B))  # no stream receives its own
        for k in f:
            assert torch.equal(init[k], f[k][src])


def test_derangement_has_no_fixed_point():
    g = torch.Generator().manual_seed(0)
    for n in (2, 3, 7):
        for _ in range(50):
            p = derangement(n, g)
            assert sorted(p.tolist()) == list(range(n)) and not (p == torch.arange(n)).any()


def test_random_noise_has_the_configured_std():
    s = StateSchemes(StateConfig(scheme="random_noise", noise_std=0.3), {"x": torch.zeros(4000, 50)}, seed=0)
    init = s.initial(StreamLoader(np.arange(4000 * 2), 4000, 1).batch(0))["x"]
    assert abs(float(init.mean())) < 0.01 and abs(float(init.std()) - 0.3) < 0.01


def test_fitted_noise_matches_the_statistics_of_observed_final_states():
    n = 20000
    tmpl = {"layers.0.ssm": torch.zeros(n, 3, 2)}
    s = StateSchemes(StateConfig(scheme="fitted_noise", fit_momentum=0.5), tmpl, seed=0)
    batch = StreamLoader(np.arange(n * 2), n, 1).batch(0)
    assert (s.initial(batch)["layers.0.ssm"] == 0).all()  # no statistics yet: zero
    mean = torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1)
    std = torch.tensor([0.1, 1.0, 3.0]).view(1, 3, 1)
    g = torch.Generator().manual_seed(1)
    for _ in range(30):
        s.observe({"layers.0.ssm": mean + std * torch.randn(n, 3, 2, generator=g)})
    init = s.initial(batch)["layers.0.ssm"]
    got_mean = init.mean(dim=(0, 2))
    got_std = init.std(dim=(0, 2))
    assert torch.allclose(got_mean, mean.flatten(), atol=0.05)
    assert torch.allclose(got_std, std.flatten(), rtol=0.05)
    fm, _ = s.fitted()
    assert torch.allclose(fm["layers.0.ssm"][:, 0], mean.flatten(), atol=0.02)  # per channel (dim 1)


def test_p_zero_drops_about_p_of_the_rows():
    n = 4000
    s = StateSchemes(StateConfig(scheme="previous", p_zero=0.25), {"x": torch.zeros(n, 2)}, seed=0)
    s.observe({"x": torch.ones(n, 2)})
    init = s.initial(StreamLoader(np.arange(n * 3), n, 1).batch(1))["x"]
    dropped = float((init[:, 0] == 0).float().mean())
    assert abs(dropped - 0.25) < 0.03
    assert ((init == 0) | (init == 1)).all()


@pytest.mark.parametrize("scheme", ["previous", "state_passing", "fitted_noise"])
def test_a_non_finite_step_carries_nothing_and_leaves_the_statistics_unchanged(scheme):
    s, data = schemes(scheme=scheme), loader()
    s.observe(finals(1))
    before = s.state_dict()
    s.observe({k: v * float("nan") for k, v in finals(2).items()}, finite=torch.tensor(False))
    after = s.state_dict()
    if scheme == "fitted_noise":
        assert all(torch.equal(after[k], before[k]) for k in before if k != "rng")
    else:  # the next window starts from zero
        assert all((v == 0).all() for v in s.initial(data.batch(2)).values())
    s.observe(finals(3), finite=torch.tensor(True))
    if scheme == "previous":
        assert all(torch.equal(s.initial(data.batch(3))[k], finals(3)[k]) for k in finals(3))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_only_fitted_noise_keeps_and_checkpoints_statistics(scheme):
    s = schemes(scheme=scheme)
    s.observe(finals(1))
    saved = {k.split(".")[0] for k in s.state_dict()}
    fitting = scheme == "fitted_noise"
    statistics = {"count", "fit_mean", "fit_sq"}
    assert saved & statistics == (statistics if fitting else set())
    assert bool(s.mean) == fitting and bool(s.sq) == fitting
    t = schemes(scheme=scheme)  # a checkpoint written by a fitted_noise run loads into any scheme...
    fitted = schemes(scheme="fitted_noise")
    fitted.observe(finals(1))
    t.load_state_dict(fitted.state_dict())
    assert bool(t.mean) == fitting
    fitted.load_state_dict(s.state_dict())  # ...and any scheme's into fitted_noise (which then keeps its own)
    assert torch.equal(fitted.fitted()[0]["layers.1.h"], finals(1)["layers.1.h"].mean(0))


def test_scheme_state_round_trips_through_state_dict():
    s, data = schemes(scheme="state_passing"), loader()
    s.observe(finals(1))
    s.observe(finals(2))
    t = schemes(scheme="state_passing")
    t.load_state_dict(s.state_dict())
    a, b = s.initial(data.batch(2)), t.initial(data.batch(2))
    for k in a:
        assert torch.equal(a[k], b[k])


@pytest.mark.parametrize("scheme", ["previous", "state_passing"])
def test_no_gradient_crosses_the_window_boundary(scheme):
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="mamba", vocab_size=32, d_model=16, n_layers=1, d_state=4))
    data = StreamLoader(np.random.default_rng(0).integers(0, 32, size=4 * 30), batch_size=4, seq_len=6)
    s = StateSchemes(StateConfig(scheme=scheme), model.initial_state(4), seed=0)
    _, final = model(data.batch(0).x, s.initial(data.batch(0)))
    assert any(v.requires_grad for v in final.values())
    s.observe(final)
    init = s.initial(data.batch(1))
    assert not any(v.requires_grad for v in init.values())
    assert any((v != 0).any() for v in init.values())  # it did carry something
    logits, _ = model(data.batch(1).x, init)
    model.zero_grad()
    logits.sum().backward()
    # the carried state is a leaf without grad: window 0's graph is not reached
    assert all(v.grad is None for v in init.values())
