"""Model-based search: the GP, the BO searcher, DyHPO's decisions, and restore with models."""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hpod.benchmarks import BUILTIN
from hpod.core.bo import BOSearcher
from hpod.core.dyhpo import CURVE_LEN, DeepKernel, DyHPOScheduler
from hpod.core.gp import expected_improvement, fit_gp, log_expected_improvement
from hpod.core.models import FitRequest, Owner, fit
from hpod.core.plans import ModeledScheduler, ModeledSearcher, NewTrial, Promote
from hpod.core.spec import StudySpec
from hpod.core.study import Study, make_scheduler, make_searcher
from hpod.errors import SpecError
from hpod.sim import simulate

Array = np.ndarray[Any, Any]


# -- the GP -------------------------------------------------------------------------------------


def _known(x: Array) -> Array:
    return np.sin(6.0 * x[:, 0]) + 0.5 * x[:, 1] ** 2  # x[:, 2] is irrelevant


def test_gp_fits_a_known_function() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((60, 3))
    gp = fit_gp(x, _known(x) + 0.01 * rng.normal(size=60))
    xs = rng.random((200, 3))
    mu, var = gp.predict(xs)
    assert np.abs(mu - _known(xs)).mean() < 0.05
    assert np.all(var > 0)
    # Where it has data, it is sure; far from it (outside the cube), much less so.
    _, near = gp.predict(x[:5])
    _, far = gp.predict(np.full((1, 3), 3.0))
    assert near.max() < 0.1 * far.min()


def test_gp_hyperparameters_by_maximum_likelihood_are_sane() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((80, 3))
    gp = fit_gp(x, _known(x) + 0.01 * rng.normal(size=80))
    ls = gp.params.lengthscales
    # The wiggly dimension is short, the quadratic one longer, the irrelevant one longest.
    assert ls[0] < ls[1] < ls[2]
    assert ls[2] > 5.0
    # Noise sigma 0.01 on targets of std ~0.7: a small noise variance, standardized.
    assert gp.params.noise < 1e-2


def test_gp_fit_is_deterministic() -> None:
    rng = np.random.default_rng(2)
    x = rng.random((30, 2))
    y = _known(np.c_[x, x[:, :1]])
    one, two = fit_gp(x, y, seed=3), fit_gp(x, y, seed=3)
    assert np.array_equal(one.params.pack(), two.params.pack())
    assert np.array_equal(one.alpha, two.alpha)


def test_expected_improvement() -> None:
    mu = np.array([0.0, 1.0, 0.0])
    var = np.array([1.0, 1.0, 1e-12])
    ei = expected_improvement(mu, var, 0.5)
    assert ei[0] > ei[1] > 0
    assert ei[2] == pytest.approx(0.5)


def test_log_expected_improvement_agrees_where_ei_is_representable() -> None:
    mu = np.zeros(6)
    var = np.array([1.0, 1.0, 1.0, 4.0, 0.25, 1.0])
    best = np.array([2.0, 0.0, -1.0, -5.0, -3.0, -20.0])
    # ... and where the model expects a large improvement (erfcx(-z) would overflow there).
    mu = np.append(mu, [0.0, 0.0])
    var = np.append(var, [1e-4, 1e-8])
    best = np.append(best, [1.0, 50.0])
    assert np.allclose(
        log_expected_improvement(mu, var, best),
        np.log(expected_improvement(mu, var, best)),
        rtol=1e-9,
    )


def test_log_expected_improvement_still_ranks_deep_in_the_tail() -> None:
    # A confident model: every candidate 40 to 5000 standard deviations from the incumbent.
    # Plain EI is 0 for all of them (so argmax would pick the first); log EI keeps their order.
    mu = np.array([5000.0, 40.0, 60.0, 1e3, 1e3 + 1.0])
    var = np.ones(5)
    assert np.all(expected_improvement(mu, var, 0.0) == 0.0)
    log_ei = log_expected_improvement(mu, var, 0.0)
    assert np.all(np.isfinite(log_ei))
    assert list(np.argsort(-log_ei)) == [1, 2, 3, 4, 0]
    # Either side of the switch to the asymptotic series, the values join up.
    around = log_expected_improvement(np.array([999.999, 1000.001]), np.ones(2), 0.0)
    assert around[0] - around[1] == pytest.approx(0.002 * 1000, rel=1e-3)


# -- BO -----------------------------------------------------------------------------------------


def _spec(name: str, scheduler: Mapping[str, Any], searcher: Mapping[str, Any]) -> StudySpec:
    raw = BUILTIN[name].spec_mapping(scheduler)
    raw["searcher"] = dict(searcher)
    return StudySpec.from_mapping(raw, base_dir=Path("/tmp"))


ASHA = {"type": "asha", "min_resource": 1, "reduction_factor": 3}
# Short fits keep the tests quick; the decisions do not depend on how good the model is.
DYHPO = {
    "type": "dyhpo",
    "min_resource": 1,
    "reduction_factor": 3,
    "options": {"fit_iterations": 40},
}


@pytest.mark.parametrize(
    ("scheduler", "searcher", "modeled"),
    [
        (ASHA, {"type": "random"}, (False, False)),
        (ASHA, {"type": "bo"}, (False, True)),
        (DYHPO, {"type": "dyhpo"}, (True, False)),
    ],
)
def test_the_model_based_parts_declare_themselves(
    scheduler: Mapping[str, Any], searcher: Mapping[str, Any], modeled: tuple[bool, bool]
) -> None:
    spec = _spec("curves-parallel", scheduler, searcher)
    found = (
        isinstance(make_scheduler(spec), ModeledScheduler),
        isinstance(make_searcher(spec), ModeledSearcher),
    )
    assert found == modeled
    assert Study.new(spec).modeled is any(modeled)


def test_bo_beats_random_search_in_the_simulator() -> None:
    b = BUILTIN["hartmann3"]
    regrets: dict[str, list[float]] = {"random": [], "bo": []}
    for kind in regrets:
        spec = _spec("hartmann3", {"type": "fifo"}, {"type": kind, "num_init_trials": 5})
        spec = dataclasses.replace(
            spec, scheduler=dataclasses.replace(spec.scheduler, max_resource=1)
        )
        for seed in range(3):
            res = simulate(
                spec,
                b.step,
                workers=2,
                budget=30,
                seed=seed,
                true_value=b.true_value,
                optimum=b.optimum,
            )
            assert res.regret is not None
            regrets[kind].append(res.regret)
    assert statistics.fmean(regrets["bo"]) < 0.5 * statistics.fmean(regrets["random"]), regrets


def test_bo_models_the_highest_rung_with_enough_observations() -> None:
    b = BUILTIN["curves-parallel"]
    spec = _spec("curves-parallel", ASHA, {"type": "bo", "num_init_trials": 4})
    res = simulate(spec, b.step, workers=4, budget=300, seed=0)
    fits = [e[2] for e in res.trace if e[1] == "fit"]
    assert fits[0] == ("bo", 1.0, 4)  # four configurations at the first rung
    assert any(key[1] >= 3.0 for key in fits)  # later, a higher rung
    assert res.decisions["model_starts"] > 0
    # Four at least: with four workers a few more start before four have reached the rung.
    assert res.decisions["random_starts"] >= 4


def test_bo_random_fraction_draws_that_share_of_its_model_turns_at_random() -> None:
    space = _spec("curves-parallel", ASHA, {"type": "bo"}).space
    rng = np.random.default_rng(0)
    x = np.stack([space.encode(space.sample(rng)) for _ in range(8)])
    model = fit_gp(x, x.sum(axis=1), seed=0)
    hows: dict[float, list[str]] = {}
    for fraction in (0.0, 0.25):
        s = BOSearcher(space, num_init_trials=4, random_fraction=fraction)
        request = FitRequest(
            "hpod.core.bo:fit_level_gp",
            owner=Owner.SEARCHER,
            key=("bo", 1.0, 8),
            seed=0,
            data={"level": 1.0},
        )
        s.install(request, model)
        hows[fraction] = [s.suggest(n, []).how for n in range(24)]  # type: ignore[union-attr]
    assert hows[0.0] == ["random"] * 4 + ["model"] * 20
    # After the four random starts, every fourth of the model's turns is drawn at random.
    assert hows[0.25] == ["random"] * 4 + ["model", "model", "model", "random"] * 5
    with pytest.raises(ValueError, match="random_fraction"):
        BOSearcher(space, random_fraction=1.0)


def test_bo_random_fraction_is_checked_in_the_spec() -> None:
    with pytest.raises(SpecError, match="random_fraction: must be < 1"):
        _spec("curves-parallel", ASHA, {"type": "bo", "random_fraction": 1.0})
    with pytest.raises(SpecError, match="random_fraction: must be >= 0"):
        _spec("curves-parallel", ASHA, {"type": "bo", "random_fraction": -0.5})


def test_bo_fits_a_level_where_every_run_diverged() -> None:
    # Every configuration at the level reported NaN: a constant, not -inf (the fit failed).
    from hpod.core.bo import fit_level_gp, level_data
    from hpod.core.plans import Observation

    history = [Observation({"x": x}, 1.0, 0.5 - x) for x in (0.1, 0.2, 0.3, 0.4, 0.5)]
    history += [Observation({"x": x}, 3.0, float("nan")) for x in (0.1, 0.2, 0.3, 0.4, 0.5)]
    data = level_data(history, maximize=False, min_points=5)
    assert data is not None
    assert data.level == 3.0
    assert all(np.isfinite(data.losses))
    request = FitRequest(
        "hpod.core.bo:fit_level_gp",
        owner=Owner.SEARCHER,
        key=("bo", 3.0, 5),
        seed=0,
        data={"x": np.array([[c["x"]] for c in data.configs]), "y": np.array(data.losses)},
    )
    fit_level_gp(request)


def test_bo_kappa_decays_as_otx_hpopt() -> None:
    b = BUILTIN["curves-parallel"]
    space = _spec("curves-parallel", ASHA, {"type": "bo"}).space
    s = BOSearcher(space, kappa=2.0, kappa_decay=0.5, kappa_decay_delay=3)
    assert [s._kappa(n) for n in range(5)] == [2.0, 2.0, 2.0, 1.0, 0.5]
    assert b.name == "curves-parallel"


# -- DyHPO --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Stub:
    """A surrogate with fixed answers: ``loss(x, budget, curve)`` in the model's units."""

    rule: Any
    y_mean: float = 0.0
    y_std: float = 1.0

    def predict(self, x: Array, budget: Array, curve: Array) -> tuple[Array, Array]:
        mu = np.array([self.rule(x[i], budget[i], curve[i]) for i in range(len(x))])
        return mu, np.full(len(x), 1e-4)

    def condition(self, x: Array, budget: Array, curve: Array, y: Array) -> Stub:
        return self


def _paused_study(p_sh: float = 0.0) -> Study:
    """A DyHPO study with three trials paused at the first rung (losses 0.5, 0.2, 0.8)."""
    spec = _spec("curves-parallel", {**DYHPO, "probability_sh": p_sh}, {"type": "dyhpo"})
    study = Study.new(spec)
    for value in (0.5, 0.2, 0.8):
        launch = study.next_launch(0.0)
        assert launch is not None
        assert launch.max_resource == 1
        study.on_report(launch.trial_id, {"loss": value, "epoch": 1}, 0.0)
        study.on_exit(launch.trial_id, 0, 0.0)
    return study


def _scheduler(study: Study) -> DyHPOScheduler:
    s = study._scheduler
    assert isinstance(s, DyHPOScheduler)
    return s


def test_dyhpo_resumes_the_paused_trial_the_model_likes_best() -> None:
    study = _paused_study()
    sched = _scheduler(study)
    sched._training_rows(study)
    x1 = study.spec.space.encode(study.trials[0].config)
    # Trial 0 (not the best so far) is predicted to do very well at rung 3; new ones poorly.
    sched.model = Stub(lambda x, b, c: -5.0 if np.allclose(x, x1) and b > 1.5 / 81 else 5.0)
    launch = study.next_launch(0.0)
    assert launch is not None
    assert (launch.trial_id, launch.resume_from, launch.max_resource) == (0, 1.0, 3.0)
    assert study.decisions == {"random_starts": 3, "model_promotions": 1}


def test_dyhpo_starts_the_new_configuration_the_model_likes_best() -> None:
    study = _paused_study()
    sched = _scheduler(study)
    sched._training_rows(study)
    # New configurations (first rung, empty curve) near x = 0.9 look best; paused ones poor.
    sched.model = Stub(lambda x, b, c: (x[0] - 0.9) ** 2 - 1.0 if c[1].sum() == 0 else 5.0)
    launch = study.next_launch(0.0)
    assert launch is not None
    assert launch.fresh
    assert launch.max_resource == 1
    assert launch.config["x"] > 0.8
    assert study.decisions["model_starts"] == 1


def _paused_6d(options: Mapping[str, Any]) -> Study:
    """A 6-D DyHPO study with three trials paused at the first rung; trial 1 (0.2) the best."""
    spec = _spec(
        "hartmann6", {**DYHPO, "probability_sh": 0.0, "options": options}, {"type": "dyhpo"}
    )
    study = Study.new(spec)
    for value in (0.5, 0.2, 0.8):
        launch = study.next_launch(0.0)
        assert launch is not None
        study.on_report(launch.trial_id, {"loss": value, "epoch": 1}, 0.0)
        study.on_exit(launch.trial_id, 0, 0.0)
    return study


def _new_start_near_the_best(options: Mapping[str, Any]) -> float:
    """How close DyHPO's new configuration lands to the best trial's, when the model says that
    closer is better (and paused trials are poor)."""
    study = _paused_6d(options)
    sched = _scheduler(study)
    sched._training_rows(study)
    best = study.spec.space.encode(study.trials[1].config)
    sched.model = Stub(lambda x, b, c: float(np.linalg.norm(x - best)) if c[1].sum() == 0 else 9.0)
    launch = study.next_launch(0.0)
    assert launch is not None
    assert launch.fresh
    return float(np.linalg.norm(study.spec.space.encode(launch.config) - best))


def test_dyhpo_in_six_dimensions_also_tries_moves_around_the_best_configurations() -> None:
    # The closest of 256 random points in the 6-D cube is ~0.25 away from a given one; local moves
    # (sd 0.1 a side) do.
    assert _scheduler(_paused_6d({})).n_local == 64
    assert _new_start_near_the_best({}) < 0.2
    assert _new_start_near_the_best({"local_candidates": 0}) > 0.2
    # In 3 dimensions random candidates cover the space: no local moves unless asked for.
    assert _scheduler(_paused_study()).n_local == 0


def test_dyhpo_without_a_model_is_asha() -> None:
    study = _paused_study()
    # floor(3 / 3) = 1 promotion at rung 1: the best, trial 1.
    launch = study.next_launch(0.0)
    assert launch is not None
    assert (launch.trial_id, launch.max_resource) == (1, 3.0)
    assert study.decisions["asha_promotions"] == 1


def test_dyhpo_tries_the_asha_rule_first_with_probability_sh() -> None:
    study = _paused_study(p_sh=1.0)
    _scheduler(study).model = Stub(lambda x, b, c: -5.0 if c[1].sum() == 0 else 5.0)
    launch = study.next_launch(0.0)
    assert launch is not None
    assert launch.trial_id == 1
    assert study.decisions["asha_promotions"] == 1


def test_dyhpo_deep_kernel_fit_is_deterministic_and_fits_its_data() -> None:
    b = BUILTIN["curves-parallel"]
    spec = _spec("curves-parallel", DYHPO, {"type": "dyhpo"})
    res = simulate(spec, b.step, workers=4, budget=150, seed=1)
    assert any(e[1] == "fit" for e in res.trace)
    seeded = dataclasses.replace(spec, searcher=dataclasses.replace(spec.searcher, seed=1))
    study = Study.new(seeded)
    request = _drive(study, b, 150, seed=1)
    assert request is not None
    one, two = fit(request), fit(request)
    assert isinstance(one, DeepKernel)
    for f in dataclasses.fields(one):
        assert np.array_equal(getattr(one, f.name), getattr(two, f.name)), f.name
    data = request.data
    mu, _ = one.predict(data["x"], data["budget"], data["curve"])
    y = (data["y"] - one.y_mean) / one.y_std
    assert np.corrcoef(mu, y)[0, 1] > 0.9
    assert data["curve"].shape[1:] == (2, CURVE_LEN)


def test_dyhpo_decides_on_every_row_seen_not_only_those_of_the_last_fit() -> None:
    # A refit waits for 10 % more rows; meanwhile the posterior is the fitted model conditioned
    # on all of them, so a rung result that came after the fit already counts.
    b = BUILTIN["curves-parallel"]
    spec = _spec("curves-parallel", DYHPO, {"type": "dyhpo"})
    request = _drive(Study.new(spec), b, 150, seed=1)
    assert request is not None
    model = fit(request)
    assert isinstance(model, DeepKernel)
    data = request.data
    x, budget, curve, y = data["x"], data["budget"], data["curve"], data["y"]
    held_out = int(np.argmin(y))  # the best row: the one a decision most needs to know
    keep = np.arange(len(y)) != held_out
    without = model.condition(x[keep], budget[keep], curve[keep], y[keep])
    again = without.condition(x, budget, curve, y)
    at = slice(held_out, held_out + 1)
    target = (y[held_out] - model.y_mean) / model.y_std
    mu_without, var_without = without.predict(x[at], budget[at], curve[at])
    mu_with, var_with = again.predict(x[at], budget[at], curve[at])
    assert abs(mu_with[0] - target) < abs(mu_without[0] - target)
    assert var_with[0] < var_without[0]
    # Conditioned on its own training set, the model is the fitted one.
    assert np.allclose(again.alpha, model.alpha)
    assert np.allclose(again.chol, model.chol)


def _drive(study: Study, b: Any, budget: int, seed: int) -> FitRequest | None:
    """Run ``study`` one worker at a time with synchronous fits; the last request seen."""
    last = None
    used = 0
    while used < budget:
        request = study.wants_fit()
        if request is not None:
            study.install(request, fit(request))
            last = request
        launch = study.next_launch(0.0)
        if launch is None:
            break
        level = launch.resume_from
        while True:
            level += 1
            metrics, _ = b.step(launch.config, level, seed)
            used += 1
            out = study.on_report(launch.trial_id, {**metrics, "epoch": level}, 0.0)
            if out.decision.value != "CONTINUE":
                break
        study.on_exit(launch.trial_id, 0, 0.0)
    return last


@pytest.mark.parametrize(
    ("scheduler", "searcher"),
    [(ASHA, {"type": "bo", "num_init_trials": 3}), (DYHPO, {"type": "dyhpo"})],
)
def test_a_restored_study_refits_the_same_model_and_decides_the_same(
    scheduler: Mapping[str, Any], searcher: Mapping[str, Any]
) -> None:
    b = BUILTIN["curves-parallel"]
    spec = _spec("curves-parallel", scheduler, searcher)
    study = Study.new(spec)
    _drive(study, b, 120, seed=0)
    restored = Study.restore(spec, study.records())
    # The original has a model fitted on older data; both refit from the same records now.
    study._fit_checked = -1
    req_a = study.wants_fit()
    req_b = restored.wants_fit()
    assert req_b is not None
    if req_a is None:  # the original's last fit was on these same data: ask for it again
        req_a = req_b
    assert req_a.key == req_b.key
    # The request says whose model it is: the study installs it there.
    assert req_a.owner is (Owner.SEARCHER if searcher["type"] == "bo" else Owner.SCHEDULER)
    for k, v in req_a.data.items():
        assert np.array_equal(np.asarray(v), np.asarray(req_b.data[k])), k
    model_a, model_b = fit(req_a), fit(req_b)
    study.install(req_a, model_a)
    restored.install(req_b, model_b)
    for _ in range(3):
        la, lb = study.next_launch(0.0), restored.next_launch(0.0)
        assert la == lb
        assert la is not None
        study.on_exit(la.trial_id, 0, 0.0)
        restored.on_exit(lb.trial_id, 0, 0.0)


def test_plans_say_how_they_were_made() -> None:
    assert NewTrial(1.0).how == "random"
    assert Promote(0, 3.0).how == "asha"


def test_dyhpo_sees_geometric_rungs_evenly_spaced() -> None:
    from hpod.core.dyhpo import DyHPOScheduler
    from hpod.core.space import SearchSpace

    space = SearchSpace.from_mapping({"x": {"param_type": "uniform", "range": [0.0, 1.0]}})
    sched = DyHPOScheduler(space, [1, 3, 9, 27], 81, 3)
    assert [sched._budget(r) for r in (1, 3, 9, 27, 81)] == pytest.approx([0, 0.25, 0.5, 0.75, 1])
