from __future__ import annotations

from pathlib import Path

import pytest

from hpod.core.bo import BOSearcher
from hpod.core.plans import Observation, Searcher, config_key
from hpod.core.searchers import DistinctSearcher, GridSearcher, RandomSearcher
from hpod.core.space import Config, Param, SearchSpace
from hpod.core.spec import StudySpec
from hpod.core.study import make_searcher

SPACE = SearchSpace.of(
    Param.loguniform("lr", 1e-4, 1e-1),
    Param.quniform("bs", 32, 128, 32),
    Param.choice("opt", ["sgd", "adam"]),
)
POINT = {"lr": 0.01, "bs": 64, "opt": "adam"}


def _config(s: Searcher, number: int, history: list[Observation]) -> Config | None:
    suggestion = s.suggest(number, history)
    return None if suggestion is None else suggestion.config


def test_random_gives_points_first_then_samples_in_the_space():
    s = RandomSearcher(SPACE, seed=3, points_to_evaluate=[POINT])
    assert _config(s, 0, []) == POINT
    for n in range(1, 50):
        config = _config(s, n, [])
        assert config is not None
        assert SPACE.problems(config, "c") == []


def test_random_is_deterministic_per_seed_and_number():
    a = RandomSearcher(SPACE, seed=1)
    b = RandomSearcher(SPACE, seed=1)
    c = RandomSearcher(SPACE, seed=2)
    forward = [_config(a, n, []) for n in range(10)]
    # A restored study may ask out of order, and with a different history: same answers.
    history = [Observation(POINT, 1.0, 0.5)]
    backward = [_config(b, n, history) for n in reversed(range(10))][::-1]
    assert forward == backward
    assert forward != [_config(c, n, []) for n in range(10)]
    assert len({repr(f) for f in forward}) == 10


def test_random_returns_copies():
    s = RandomSearcher(SPACE, points_to_evaluate=[POINT])
    first = _config(s, 0, [])
    assert first is not None
    first["bs"] = 96
    assert _config(s, 0, []) == POINT


def test_distinct_never_suggests_a_configuration_already_run_and_ends_an_exhausted_space():
    # 4 x 2 = 8 configurations: each suggested once, then None.
    small = SearchSpace.of(Param.quniform("bs", 32, 128, 32), Param.choice("opt", ["sgd", "adam"]))
    assert small.finite_size == 8
    s = DistinctSearcher(small, seed=4)
    history: list[Observation] = []
    for n in range(8):
        config = _config(s, n, history)
        assert config is not None
        assert config_key(config) not in {config_key(o.config) for o in history}
        history.append(Observation(config, 0.0, float("nan")))
    assert _config(s, 8, history) is None
    # Pure: the same history, the same answer; where nothing was run yet, random's draw.
    assert _config(s, 3, history[:3]) == history[3].config
    assert _config(s, 0, []) == _config(RandomSearcher(small, seed=4), 0, [])
    # A continuous parameter: no end.
    assert SPACE.finite_size is None
    assert DistinctSearcher(SPACE).suggest(0, history) is not None


def test_grid_order_and_exhaustion():
    s = GridSearcher(SPACE, points_per_param=4)
    configs = [_config(s, n, []) for n in range(len(s))]
    assert len(configs) == 4 * 4 * 2
    assert configs[0] == {"lr": 1e-4, "bs": 32, "opt": "sgd"}
    assert configs[1] == {"lr": 1e-4, "bs": 32, "opt": "adam"}
    assert configs[2] == {"lr": 1e-4, "bs": 64, "opt": "sgd"}
    assert configs[8] == {"lr": 1e-3, "bs": 32, "opt": "sgd"}
    assert configs[-1] == {"lr": 1e-1, "bs": 128, "opt": "adam"}
    # Fewer grid points than a quantized parameter's levels: still its whole lattice (only the
    # continuous lr is spread, over 2).
    two = GridSearcher(SPACE, points_per_param=2)
    assert len(two) == 2 * 4 * 2
    assert [_config(two, n, []) for n in range(0, 8, 2)] == [
        {"lr": 1e-4, "bs": bs, "opt": "sgd"} for bs in (32, 64, 96, 128)
    ]
    assert _config(s, len(s), []) is None
    assert _config(s, len(s) + 5, []) is None


def test_grid_puts_points_first_and_skips_their_duplicates():
    given = {"lr": 1e-4, "bs": 64.0, "opt": "adam"}
    s = GridSearcher(SPACE, points_per_param=4, points_to_evaluate=[given])
    assert len(s) == 32
    assert _config(s, 0, []) == {"lr": 1e-4, "bs": 64, "opt": "adam"}
    rest = [_config(s, n, []) for n in range(1, 32)]
    assert {"lr": 1e-4, "bs": 64, "opt": "adam"} not in rest


def test_negative_numbers_are_refused():
    with pytest.raises(ValueError, match="start at 0"):
        RandomSearcher(SPACE).suggest(-1, [])
    with pytest.raises(ValueError, match="start at 0"):
        GridSearcher(SPACE).suggest(-1, [])


SPEC = """
name = "s"
command = ["train", "{{x}}"]
[objective]
metric = "loss"
mode = "min"
[space]
x = {{ param_type = "quniform", range = [0, 4, 1] }}
[scheduler]
type = "{scheduler}"
max_resource = 9
[searcher]
type = "{searcher}"
seed = 5
grid_points = 3
"""


@pytest.mark.parametrize(
    ("scheduler", "searcher", "kind"),
    [
        ("asha", "random", RandomSearcher),
        ("fifo", "grid", GridSearcher),
        ("hyperband", "bo", BOSearcher),  # random (the same draws) until it has a model
        ("dyhpo", "dyhpo", DistinctSearcher),  # random draws, none run twice
    ],
)
def test_make_searcher(scheduler, searcher, kind):
    spec = StudySpec.from_toml(
        SPEC.format(scheduler=scheduler, searcher=searcher), base_dir=Path("/")
    )
    s = make_searcher(spec)
    assert isinstance(s, kind)
    if isinstance(s, GridSearcher):
        # grid_points = 3 spreads only continuous parameters: x's whole lattice runs.
        assert [_config(s, n, []) for n in range(6)] == [{"x": k} for k in range(5)] + [None]
    else:
        assert _config(s, 0, []) == _config(RandomSearcher(spec.space, seed=5), 0, [])
