"""OTX hpopt's functional API over an hpod daemon: ``from hpod.compat import hpopt``.

hpopt's loop runs with only its import changed::

    my_hpo = hpopt.create(search_alg="bayes_opt", search_space=hp_configs, num_trials=50,
                          max_iterations=2, num_full_iterations=2, full_dataset_size=1)
    while True:
        config = my_hpo.get_next_sample()
        if config is None:
            break
        my_trainer(config)          # hpopt.report(config=config, score=...) each iteration
    print(my_hpo.get_best_config())

``create`` submits a study whose trials the caller runs (``[executor] type = "external"``:
hpod/daemon/external.py) from hpopt's arguments, read as an ``hpo_config.yaml`` is
(:mod:`hpod.core.otx`, hpopt's defaults where an argument is left out). ``get_next_sample(s)``
are ``ask``; :func:`report`, :func:`reportOOM` and :func:`finalize_trial` are ``tell`` with the
trial's token, carried in the sample's ``config``. docs/otx.md lists where hpod differs.
"""

from __future__ import annotations

import contextlib
import enum
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpod.client import Client
from hpod.core import otx
from hpod.core.tomlout import to_toml
from hpod.errors import HpodError, NotFound, TokenRejected

__all__ = [
    "HpOpt",
    "SearchSpace",
    "Status",
    "create",
    "createHpoDataset",
    "finalize_trial",
    "report",
    "reportOOM",
    "search_space",
]

# How long get_next_sample waits between asks while no trial may start (a rung to wait for, all
# max_concurrent trials out), doubling from the first to the last.
_POLL_FIRST = 0.02
_POLL_MAX = 0.5
# hpopt's floor on a proxy dataset's size.
SUBSET_FLOOR = 500
_FINAL_STATES = ("completed", "stopped", "failed")


class Status(enum.IntEnum):
    """hpopt's statuses: what :func:`report` answers (RUNNING: go on; STOP: end the trial)."""

    UNKNOWN = 0
    READY = 1
    RUNNING = 2
    STOP = 3
    NORESULT = 4
    PARTIALRESULT = 5
    COMPLETERESULT = 6


class SearchSpace:
    """One hyperparameter: hpopt's ``search_space(type, range)`` (uniform, quniform,
    loguniform, qloguniform with an optional log base, choice)."""

    def __init__(self, type: str, range: Sequence[Any]) -> None:
        self.type = type
        self.range = list(range)

    def to_dict(self) -> dict[str, Any]:
        return {"param_type": self.type, "range": list(self.range)}

    def __repr__(self) -> str:
        return f"search_space({self.type!r}, {self.range!r})"


search_space = SearchSpace  # hpopt's older spelling, as its samples write it


def _space_entry(value: Any) -> Any:
    if isinstance(value, SearchSpace):
        return value.to_dict()
    if isinstance(value, Mapping):
        # hpopt's dict form: {"param_type": ..., "range": ...}, or {"type": ..., "range": ...}
        entry = dict(value)
        if "type" in entry and "param_type" not in entry:
            entry["param_type"] = entry.pop("type")
        return entry
    return value  # its own problem, by key path


def create(
    full_dataset_size: int | None = None,
    num_full_iterations: int | None = None,
    search_space: Mapping[str, Any] | None = None,
    save_path: str = "hpo",
    search_alg: str = "bayes_opt",
    early_stop: str | None = None,
    mode: str = "max",
    num_init_trials: int = 5,
    num_trials: int | None = None,
    max_iterations: int | None = None,
    min_iterations: int | None = None,
    reduction_factor: int = 2,
    num_brackets: int | None = None,
    subset_ratio: float | None = None,
    batch_size_name: str | None = None,
    image_resize: Sequence[int] | None = None,
    metric: str = "mAP",
    resume: bool = False,
    expected_time_ratio: float = 4,
    non_pure_train_ratio: float = 0.2,
    num_workers: int = 1,
    kappa: float = 2.576,
    kappa_decay: float = 1,
    kappa_decay_delay: int = 0,
    default_hyper_parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
    use_epoch: bool = False,
    *,
    ealry_stop: str | None = None,  # hpopt's samples spell it so
    socket: str | None = None,
    name: str | None = None,
) -> HpOpt:
    """A study on the daemon (``socket``: the default socket when None) from hpopt's arguments,
    with hpopt's defaults; an :class:`HpOpt` to take its samples from. ``resume=True`` goes on
    with the latest study of the same name (``name``, else ``save_path``'s last part) where
    there is one: a completed one hands out no more samples, and its best is there."""
    if search_space is None:
        raise HpodError("create() needs search_space: {name: search_space(type, range), ...}")
    raw: dict[str, Any] = {
        "name": name or otx.default_name(Path(save_path)),
        "metric": metric,
        "mode": mode,
        "search_algorithm": search_alg,
        "hp_space": {str(k): _space_entry(v) for k, v in search_space.items()},
        "num_init_trials": num_init_trials,
        "reduction_factor": reduction_factor,
        "expected_time_ratio": expected_time_ratio,
        "num_workers": num_workers,
    }
    stop_rule = early_stop if early_stop is not None else ealry_stop
    if search_alg != "asha":
        raw.update(kappa=kappa, kappa_decay=kappa_decay, kappa_decay_delay=kappa_decay_delay)
        if stop_rule is not None:
            raw["early_stop"] = stop_rule
    else:
        del raw["num_init_trials"]
    for key, value in (
        ("num_trials", num_trials),
        ("max_iterations", max_iterations),
        ("min_iterations", min_iterations),
        ("num_brackets", num_brackets),
        ("subset_ratio", subset_ratio),
        ("batch_size_name", batch_size_name),
        ("num_full_iterations", num_full_iterations),
        ("default_hyper_parameters", default_hyper_parameters),
    ):
        if value is not None:
            raw[key] = list(value) if isinstance(value, tuple) else value
    # Taken and not used, as from an hpo_config.yaml (docs/otx.md): save_path, image_resize,
    # full_dataset_size, non_pure_train_ratio, use_epoch.
    from hpod.core.spec import StudySpec, has_time_budget

    mapping = otx.spec_from_raw(raw, budget=has_time_budget(), external=True)
    text = to_toml(mapping)
    StudySpec.from_toml(text, base_dir=Path.cwd())  # every problem, before the daemon is asked
    client = Client(socket)
    study: str | None = None
    if resume:
        same = [s for s in client.studies() if s.get("name") == mapping["name"]]
        if same:
            # The latest: ids are <name>-<n>, n counting up.
            study = str(max(same, key=lambda s: _number_of(str(s["study"])))["study"])
    if study is None:
        study = str(client.submit_text(text, Path.cwd())["study"])
    return HpOpt(client, study, metric=metric, batch_size_name=batch_size_name, mode=mode)


def _number_of(study: str) -> int:
    tail = study.rpartition("-")[2]
    return int(tail) if tail.isdigit() else -1


class HpOpt:
    """The samples of one study: hpopt's ``get_next_sample(s)``, ``get_best_config`` and
    ``print_results``. Thread-safe as :class:`hpod.Client` is."""

    def __init__(
        self,
        client: Client,
        study: str,
        *,
        metric: str,
        batch_size_name: str | None,
        mode: str,
    ) -> None:
        self.client = client
        self.study = study
        self.metric = metric
        self.batch_size_name = batch_size_name
        self.mode = mode
        # Samples handed out by this object and not yet ended: (trial, token).
        self._open: list[tuple[int, str]] = []

    # -- samples ---------------------------------------------------------------------------

    def get_next_sample(self) -> dict[str, Any] | None:
        """The next trial's config, waiting while none may start yet; None once the study is
        over. A trial this object handed out earlier and that is still open is ended first
        (hpopt's loops run a trial to its end before asking again)."""
        self._close_open()
        pause = _POLL_FIRST
        while True:
            given = self.client.ask(self.study)
            if given is not None:
                return self._config(given)
            if self._over():
                return None
            time.sleep(pause)
            pause = min(pause * 2, _POLL_MAX)

    def get_next_samples(self) -> list[dict[str, Any]]:
        """Every trial that may start now (at least one, waiting for it as
        :meth:`get_next_sample` does); [] once the study is over."""
        first = self.get_next_sample()
        if first is None:
            return []
        out = [first]
        while True:
            given = self.client.ask(self.study)
            if given is None:
                return out
            out.append(self._config(given))

    def _config(self, given: Mapping[str, Any]) -> dict[str, Any]:
        trial, token = int(given["trial"]), str(given["token"])
        self._open.append((trial, token))
        params = dict(given.get("config") or {})
        return {
            "params": params,
            "iterations": int(float(given.get("max_resource") or 0)),
            "trial_id": trial,
            "mode": self.mode,
            "metric": self.metric,
            "subset_ratio": params.get("subset_ratio"),
            "batch_size_param_name": self.batch_size_name,
            "resume_from": given.get("resume_from", 0),
            "file_path": None,  # hpopt's trial file: hpod keeps the trial in its store
            "_hpod": {
                "socket": self.client.socket_path,
                "study": self.study,
                "trial": trial,
                "token": token,
                "reports": 0,
            },
        }

    def _close_open(self) -> None:
        for trial, token in self._open:
            _final(self.client, self.study, trial, token)
        self._open.clear()

    def _over(self) -> bool:
        return str(self.client.study(self.study).get("state")) in _FINAL_STATES

    # -- results ---------------------------------------------------------------------------

    def get_best_config(self, wait: bool = False) -> dict[str, Any] | None:
        """The best trial's hyperparameters (None before any result). ``wait``: once the study
        has ended (its open samples ended first)."""
        if wait:
            self._close_open()
            self.client.wait(self.study)
        try:
            best = self.client.best(self.study)
        except NotFound:
            return None
        return dict(best.get("config") or {})

    def print_results(self) -> None:
        """Every trial's configuration, state and score, one a line."""
        for t in self.client.trials(self.study):
            score = t.get("objective")
            print(
                f"trial {t.get('trial')}: {t.get('state')} {self.metric} = {score} "
                f"at {t.get('resource')}; {t.get('config')}",
                flush=True,
            )


# -- the trial's side ----------------------------------------------------------------------------

_clients: dict[str | None, Client] = {}


def _client_for(config: Mapping[str, Any]) -> tuple[Client, dict[str, Any]]:
    ours = config.get("_hpod")
    if not isinstance(ours, dict):
        raise HpodError("this config was not handed out by hpod.compat.hpopt's get_next_sample")
    socket = ours.get("socket")
    client = _clients.get(socket)
    if client is None:
        client = _clients[socket] = Client(socket)
    return client, ours


def _final(client: Client, study: str, trial: int, token: str) -> None:
    # Ended already (told final, or taken back): nothing to end.
    with contextlib.suppress(TokenRejected, NotFound):
        client.tell(study, trial, token, final=True)


def report(config: dict[str, Any], score: float, current_iters: int = -1) -> Status:
    """One iteration's score: ``Status.RUNNING`` to go on, ``Status.STOP`` to end the trial
    (hpod's PAUSE at a rung and STOP both; the trial is then ended, told final). The level is
    ``current_iters`` where given (> 0), else one more than the last report's."""
    client, ours = _client_for(config)
    level = current_iters if current_iters > 0 else int(ours["reports"]) + 1
    ours["reports"] = level
    metric = str(config.get("metric") or "mAP")
    answer = client.tell(
        ours["study"], ours["trial"], ours["token"], {"epoch": level, metric: float(score)}
    )
    decision = answer.get("decision")
    if decision == "CONTINUE" and level < int(config.get("iterations") or 0):
        return Status.RUNNING
    _final(client, ours["study"], ours["trial"], ours["token"])
    return Status.STOP


def reportOOM(config: dict[str, Any]) -> None:
    """The trial ran out of memory: it ends, and the study's [oom] policy (``batch_size_name``)
    hands it out again with the batch halved (docs/oom.md)."""
    client, ours = _client_for(config)
    client.call(
        "trial.oom", {"study": ours["study"], "trial": ours["trial"], "token": ours["token"]}
    )
    _final(client, ours["study"], ours["trial"], ours["token"])


def finalize_trial(config: dict[str, Any]) -> None:
    """End the trial now (it stopped for its own reasons): told final."""
    client, ours = _client_for(config)
    _final(client, ours["study"], ours["trial"], ours["token"])


def createHpoDataset(dataset: Any, config: Mapping[str, Any]) -> Any:
    """The trial's proxy dataset: a deterministic subset by the config's ``subset_ratio``, never
    under 500 samples (hpopt's floor); the dataset itself without a ratio or at 1 and above."""
    ratio = config.get("subset_ratio")
    if ratio is None:
        params = config.get("params")
        ratio = params.get("subset_ratio") if isinstance(params, Mapping) else None
    if ratio is None or float(ratio) >= 1.0:
        return dataset
    from hpod import trial

    helper = getattr(trial, "subset", None)
    if helper is not None:
        return helper(dataset, float(ratio), floor=SUBSET_FLOOR)
    import random

    n = len(dataset)
    keep = min(n, max(SUBSET_FLOOR, round(n * float(ratio))))
    order = list(range(n))
    random.Random(0).shuffle(order)
    return _Subset(dataset, sorted(order[:keep]))


class _Subset:
    """A sequence of some of a dataset's items (torch's Subset, without torch)."""

    def __init__(self, dataset: Any, indices: list[int]) -> None:
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.indices[i]]
