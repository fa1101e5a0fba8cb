import itertools
import math

import pytest
import torch

from common.smile.schedule import RelabelingSchedule

# ------------------------------------------------------------------------------------------------------- epoch plan


def test_epoch_plan_with_an_initial_smile_round():
    # round 0 trains epochs 1..30, round 1 trains 31..40, round 2 trains 41..50
    schedule = RelabelingSchedule(num_rounds=2, round_epochs=10, initial_epochs=30)
    assert schedule.total_epochs == 50
    assert list(schedule.rounds) == [0, 1, 2]
    assert [schedule.round_start(r) for r in (0, 1, 2)] == [0, 30, 40]
    assert [schedule.round_end(r) for r in (0, 1, 2)] == [30, 40, 50]


@pytest.mark.parametrize(
    ("epoch", "round_index"),
    [(1, 0), (30, 0), (31, 1), (40, 1), (41, 2), (50, 2), (51, 2), (1000, 2)],
)
def test_round_of_epoch_with_an_initial_round(epoch, round_index):
    schedule = RelabelingSchedule(num_rounds=2, round_epochs=10, initial_epochs=30)
    assert schedule.round_of_epoch(epoch) == round_index


def test_ending_and_starting_rounds_with_an_initial_round():
    schedule = RelabelingSchedule(num_rounds=2, round_epochs=10, initial_epochs=30)
    ending = {done: schedule.ending_round(done) for done in (0, 29, 30, 35, 40, 50)}
    starting = {done: schedule.starting_round(done) for done in (0, 29, 30, 35, 40, 50)}
    assert ending == {0: None, 29: None, 30: 0, 35: None, 40: 1, 50: 2}
    # relabeling of round t runs once round t-1 has ended; nothing starts after the last round
    assert starting == {0: None, 29: None, 30: 1, 35: None, 40: 2, 50: None}


def test_epoch_plan_without_an_initial_round():
    # training starts from given weights: round 1 relabels at once, trains 1..10, round 2 trains 11..20
    schedule = RelabelingSchedule(num_rounds=2, round_epochs=10, initial_epochs=0)
    assert schedule.total_epochs == 20
    assert list(schedule.rounds) == [1, 2]
    assert [schedule.round_start(r) for r in (1, 2)] == [0, 10]
    assert [schedule.round_end(r) for r in (1, 2)] == [10, 20]
    assert [schedule.round_of_epoch(e) for e in (1, 10, 11, 20, 21)] == [1, 1, 2, 2, 2]
    assert [schedule.starting_round(d) for d in (0, 5, 10, 20)] == [1, None, 2, None]
    # round 0 trains no epoch, so no round "ends" at 0 completed epochs
    assert [schedule.ending_round(d) for d in (0, 10, 15, 20)] == [None, 1, None, 2]


def test_default_initial_epochs_is_zero():
    schedule = RelabelingSchedule(num_rounds=3, round_epochs=4)
    assert schedule.initial_epochs == 0 and schedule.total_epochs == 12 and list(schedule.rounds) == [1, 2, 3]


@pytest.mark.parametrize("round_index", [-1, 3])
def test_round_outside_the_plan_is_rejected(round_index):
    schedule = RelabelingSchedule(num_rounds=2, round_epochs=10, initial_epochs=30)
    with pytest.raises(ValueError, match=r"round must be in 0\.\.2"):
        schedule.round_start(round_index)
    with pytest.raises(ValueError, match=r"round must be in 0\.\.2"):
        schedule.round_end(round_index)


def test_epochs_count_from_one():
    with pytest.raises(ValueError, match="epochs count from 1"):
        RelabelingSchedule(num_rounds=2, round_epochs=10).round_of_epoch(0)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_rounds": 0, "round_epochs": 10}, "num_rounds"),
        ({"num_rounds": -1, "round_epochs": 10}, "num_rounds"),
        ({"num_rounds": 2, "round_epochs": 0}, "round_epochs"),
        ({"num_rounds": 2, "round_epochs": 10, "initial_epochs": -1}, "initial_epochs"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        RelabelingSchedule(**kwargs)


# ---------------------------------------------------------------------------------------------- learning-rate factor


def _cosine(position, length):
    return 0.5 * (1.0 + math.cos(math.pi * position / length))


def test_lr_factor_restarts_at_each_round():
    schedule = RelabelingSchedule(num_rounds=2, round_epochs=10, initial_epochs=30)
    # completed epochs 0, 30 and 40 are the first epochs of rounds 0, 1 and 2
    assert [schedule(done) for done in (0, 30, 40)] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("completed", "factor"),
    [
        (15, 0.5),  # round 0: half of 30 epochs, cos(pi / 2) = 0
        (10, 0.75),  # round 0: a third, 0.5 * (1 + cos(pi / 3)) = 0.5 * 1.5
        (35, 0.5),  # round 1: position 5 of 10
        (45, 0.5),  # round 2: position 5 of 10
        (50, 0.0),  # past the end: the factor of the end of round 2
    ],
)
def test_lr_factor_hand_values(completed, factor):
    schedule = RelabelingSchedule(num_rounds=2, round_epochs=10, initial_epochs=30)
    assert schedule(completed) == pytest.approx(factor, abs=1e-12)


def test_lr_factor_follows_the_cosine_inside_a_round():
    schedule = RelabelingSchedule(num_rounds=2, round_epochs=10, initial_epochs=30)
    assert [schedule(30 + i) for i in range(10)] == pytest.approx([_cosine(i, 10) for i in range(10)], abs=1e-12)
    assert schedule(32) == pytest.approx(0.5 * (1 + math.cos(0.2 * math.pi)), abs=1e-12)  # 0.904508...
    assert schedule(39) == pytest.approx(0.0244717418524232, abs=1e-12)  # 0.5 * (1 + cos(0.9 pi))
    # the factor decreases inside a round, then jumps back to 1
    factors = [schedule(done) for done in range(30, 40)]
    assert all(a > b for a, b in itertools.pairwise(factors)) and schedule(40) == 1.0


def test_lr_factor_without_an_initial_round():
    schedule = RelabelingSchedule(num_rounds=2, round_epochs=4, initial_epochs=0)
    # round 1: completed 0..3, round 2: completed 4..7
    expected = [1.0, _cosine(1, 4), 0.5, _cosine(3, 4), 1.0, _cosine(1, 4), 0.5, _cosine(3, 4)]
    assert [schedule(done) for done in range(8)] == pytest.approx(expected, abs=1e-12)
    assert _cosine(1, 4) == pytest.approx(0.8535533905932737)


def _sgd(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _lrs(scheduler, optimizer, epochs):
    lrs = []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_lambda_lr_follows_the_schedule():
    schedule = RelabelingSchedule(num_rounds=2, round_epochs=4, initial_epochs=4)
    optimizer = _sgd(0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=schedule)
    lrs = _lrs(scheduler, optimizer, 12)
    one_round = [0.1, 0.1 * _cosine(1, 4), 0.05, 0.1 * _cosine(3, 4)]
    assert lrs == pytest.approx(one_round * 3, abs=1e-12)


def test_lambda_lr_state_dict_round_trips_the_schedule():
    optimizer = _sgd(0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=RelabelingSchedule(2, 4, initial_epochs=4))
    _lrs(scheduler, optimizer, 5)  # 5 epochs done: inside round 1
    state = scheduler.state_dict()
    assert state["lr_lambdas"] == [{"num_rounds": 2, "round_epochs": 4, "initial_epochs": 4}]

    restored_optimizer = _sgd(0.1)
    other = RelabelingSchedule(num_rounds=5, round_epochs=1, initial_epochs=0)
    restored = torch.optim.lr_scheduler.LambdaLR(restored_optimizer, lr_lambda=other)
    restored.load_state_dict(state)
    assert (other.num_rounds, other.round_epochs, other.initial_epochs) == (2, 4, 4)
    assert other.total_epochs == 12
    restored_optimizer.load_state_dict(optimizer.state_dict())  # a resumed run restores both
    # completed epochs 5..11: the rest of round 1, then round 2 from its warm restart
    expected = [0.1 * _cosine(1, 4), 0.05, 0.1 * _cosine(3, 4), 0.1, 0.1 * _cosine(1, 4), 0.05, 0.1 * _cosine(3, 4)]
    assert _lrs(restored, restored_optimizer, 7) == pytest.approx(expected, abs=1e-12)
    assert _lrs(scheduler, optimizer, 7) == pytest.approx(expected, abs=1e-12)
