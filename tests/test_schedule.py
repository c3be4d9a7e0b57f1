"""Optimiser groups and the learning-rate schedule (ops.schedule) against the official ones (paper App. H.3)."""
import math

import pytest
import torch

from ops.schedule import adjust_learning_rate, base_learning_rate, param_groups, warm_up, warmup_factor
from support import tiny_model


def test_eight_groups_in_the_official_order_cover_every_parameter():
    model = tiny_model()
    groups = param_groups(model)
    assert [g["name"] for g in groups] == ["temporal_policy", "spatial_policy", "glance", "glance_head",
                                          "spatial_head", "focus", "focus_head", "classifier"]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))


def test_activitynet_learning_rates_match_the_paper():
    model = tiny_model()
    opt = torch.optim.SGD(param_groups(model), lr=0.002, momentum=0.9, weight_decay=2e-4)
    adjust_learning_rate(opt, 0, 0.002, 50, "cos", weight_decay=2e-4)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["classifier"] == pytest.approx(0.04)
    assert lrs["focus"] == lrs["focus_head"] == pytest.approx(0.002)
    assert lrs["glance"] == lrs["glance_head"] == lrs["spatial_head"] == pytest.approx(0.001)
    assert lrs["spatial_policy"] == lrs["temporal_policy"] == pytest.approx(0.0004)
    assert all(g["weight_decay"] == 2e-4 for g in opt.param_groups)


def test_cosine_schedule_is_per_epoch_without_warm_up():
    assert base_learning_rate(0, 0.002, 50) == pytest.approx(0.002)
    assert base_learning_rate(25, 0.002, 50) == pytest.approx(0.001)
    assert base_learning_rate(49, 1.0, 50) == pytest.approx(0.5 * (1 + math.cos(math.pi * 49 / 50)))
    assert base_learning_rate(49, 1.0, 50) == pytest.approx(0.000987, abs=1e-6)


def test_step_schedule_counts_the_milestones_reached():
    assert [base_learning_rate(e, 1.0, 50, "step", [10, 20]) for e in (0, 9, 10, 19, 20, 49)] == \
        pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ValueError, match="lr_type"):
        base_learning_rate(0, 1.0, 50, "linear")


def test_a_group_waits_for_its_start_epoch_without_moving():
    model = tiny_model()
    opt = torch.optim.AdamW(param_groups(model, stn_lr_ratio=1.0), lr=0.01, weight_decay=0.1)
    spatial = [g for g in opt.param_groups if g["name"] == "spatial_policy"][0]
    adjust_learning_rate(opt, 1, 0.01, 6, "cos", weight_decay=0.1, start_epochs={"spatial_policy": 2})
    assert spatial["lr"] == 0.0
    assert all(g["lr"] > 0 for g in opt.param_groups if g is not spatial)
    before = [p.detach().clone() for p in spatial["params"]]
    for p in model.parameters():  # a gradient everywhere: only the waiting group must stay put
        p.grad = torch.ones_like(p)
    opt.step()
    assert all(torch.equal(b, p) for b, p in zip(before, spatial["params"]))
    adjust_learning_rate(opt, 2, 0.01, 6, "cos", weight_decay=0.1, start_epochs={"spatial_policy": 2})
    assert spatial["lr"] == pytest.approx(base_learning_rate(2, 0.01, 6))


def test_linear_warm_up_rises_per_step_and_meets_the_schedule():
    assert warmup_factor(0.0, 2) == 0.0 and warmup_factor(0.5, 2) == pytest.approx(0.25)
    assert warmup_factor(2.0, 2) == warmup_factor(7.3, 2) == warmup_factor(0.0, 0) == 1.0
    model = tiny_model()
    opt = torch.optim.AdamW(param_groups(model), lr=0.01)
    steps, seen = 4, []
    for epoch in range(3):
        adjust_learning_rate(opt, epoch, 0.01, 10, "cos")
        for step in range(steps):
            warm_up(opt, epoch, step, steps, 1.5)
            seen.append([g["lr"] / g["scheduled_lr"] for g in opt.param_groups])
    # every group by the same factor: (steps done, this one included) / (1.5 epochs of 4 steps)
    expected = [min(1.0, (i + 1) / 6) for i in range(12)]
    assert [row[0] for row in seen] == pytest.approx(expected)
    assert all(row == pytest.approx([row[0]] * len(row)) for row in seen)
    assert opt.param_groups[0]["lr"] == pytest.approx(base_learning_rate(2, 0.01, 10) * 0.2)  # after: the schedule


def test_warm_up_without_a_schedule_ramps_the_optimisers_own_rate():
    opt = torch.optim.SGD(param_groups(tiny_model()), lr=0.1)
    rates = []
    for step in range(4):
        warm_up(opt, 0, step, 4, 1)
        rates.append(opt.param_groups[0]["lr"])
    assert rates == pytest.approx([0.025, 0.05, 0.075, 0.1])  # not compounded from step to step


def test_adamw_on_a_cpu_is_fused_and_steps_as_the_default_loop(capsys):
    from ops import build, config
    flags = ["--optimizer", "adamw", "--lr", "0.01", "--weight_decay", "0.1", "--temporal_lr_ratio", "0.2",
             "--stn_lr_ratio", "0.5", "--global_lr_ratio", "0.5", "--classifier_lr_ratio", "2"]
    torch.manual_seed(0)
    fused_model, loop_model = tiny_model(), tiny_model()
    loop_model.load_state_dict(fused_model.state_dict())
    fused = build.build_optimizer(config.parse_args(flags), fused_model)
    loop = build.build_optimizer(config.parse_args(flags + ["--no-fused_adamw"]), loop_model)
    assert all(g["fused"] for g in fused.param_groups) and not any(g["fused"] for g in loop.param_groups)
    for opt in (fused, loop):  # the spatial policy waits (rate 0): it must stay put in both
        adjust_learning_rate(opt, 1, 0.01, 6, "cos", weight_decay=0.1, start_epochs={"spatial_policy": 2})
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        grads = [torch.randn(p.shape, generator=generator) for p in fused_model.parameters()]
        for model, opt in ((fused_model, fused), (loop_model, loop)):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            opt.step()
    for (name, a), b in zip(fused_model.named_parameters(), loop_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(SystemExit):
        config.parse_args(["--fused_adamw"])  # SGD by default
    assert "--fused_adamw" in capsys.readouterr().err


def test_a_resumed_optimizer_keeps_this_runs_implementation():
    from ops import build, config
    flags = ["--optimizer", "adamw", "--lr", "0.01"]
    saved = build.build_optimizer(config.parse_args(flags), tiny_model())  # fused (a CPU)
    for p in saved.param_groups[0]["params"]:
        p.grad = torch.ones_like(p)
    saved.step()
    resumed = build.build_optimizer(config.parse_args(flags + ["--no-fused_adamw"]), tiny_model())
    build.load_optimizer_state(resumed, saved.state_dict())
    assert not any(g["fused"] for g in resumed.param_groups)  # plain load_state_dict would restore True
    assert resumed.state_dict()["state"].keys() == saved.state_dict()["state"].keys()  # the moments did load
