"""OTX's ``hpo_config.yaml`` read as it is, into a study spec (docs/otx.md).

OpenVINO Training Extensions configures its HPO with a YAML file of a few keys (``metric``,
``mode``, ``search_algorithm``, ``hp_space`` ...) and the arguments of hpopt's ``create``. This
module turns such a file into the tables of hpod's own spec, with hpopt's defaults for what the
file leaves out, and writes them as TOML (:mod:`hpod.core.tomlout`): that TOML is what is
submitted, stored and shown by ``hpodctl preview``. Every problem is named by the file's own
key path, all at once, as a TOML spec's are.

Pure: YAML text in, a mapping or TOML text out; PyYAML's ``safe_load`` only.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from hpod.core.problems import Section, type_name
from hpod.core.space import SearchSpace
from hpod.core.tomlout import to_toml
from hpod.errors import SpecError

__all__ = [
    "HPOPT_DEFAULTS",
    "IGNORED_KEYS",
    "back",
    "is_yaml_path",
    "looks_like_toml",
    "looks_like_yaml",
    "spec_from_raw",
    "spec_mapping",
    "spec_toml",
]

YAML_SUFFIXES = (".yaml", ".yml")

# hpopt's ``create`` defaults, used where the file says nothing (docs/otx.md lists them).
HPOPT_DEFAULTS: dict[str, Any] = {
    "metric": "mAP",
    "mode": "max",
    "search_algorithm": "bayes_opt",
    "num_init_trials": 5,
    "reduction_factor": 2,
    "expected_time_ratio": 4,
    "num_workers": 1,
    "kappa": 2.576,
    "kappa_decay": 1,
    "kappa_decay_delay": 0,
}

# hpopt arguments that hpod takes and does nothing with, each with why (docs/otx.md).
IGNORED_KEYS: dict[str, str] = {
    "save_path": "hpod keeps a study's results in its store (hpodctl show / best)",
    "resume": "hpod resumes a study by itself after a restart",
    "full_dataset_size": "the trial's subset helper sees its dataset's size itself",
    "non_pure_train_ratio": "hpod measures the time outside training from the trials' reports",
    "image_resize": "no counterpart; resize in the trial",
    "use_epoch": "the resource is what the trial reports as objective.resource",
}

# When there is no time budget to derive them from (see _budget_keys): the resource trials run
# to, and how many of them there are, without maximum_resource / num_trials.
FALLBACK_FULL_RESOURCE = 20

_SEARCHERS = {"bayes_opt": "bo", "smbo": "bo", "asha": "random"}

_HPOD_KEYS = ("name", "command", "workdir", "resource", "env", "pass_env")

_KEYS = (
    *_HPOD_KEYS,
    "metric",
    "mode",
    "search_algorithm",
    "search_alg",
    "early_stop",
    "hp_space",
    "search_space",
    "maximum_resource",
    "max_iterations",
    "minimum_resource",
    "min_iterations",
    "num_trials",
    "num_init_trials",
    "reduction_factor",
    "num_brackets",
    "subset_ratio",
    "batch_size_name",
    "expected_time_ratio",
    "num_full_iterations",
    "num_workers",
    "kappa",
    "kappa_decay",
    "kappa_decay_delay",
    "default_hyper_parameters",
    *IGNORED_KEYS,
)

# hpod's key paths in the problems of the spec made, back to the file's keys.
_BACK: dict[str, str] = {
    "objective.metric": "metric",
    "objective.mode": "mode",
    "objective.resource": "resource",
    "scheduler.max_resource": "maximum_resource",
    "scheduler.min_resource": "minimum_resource",
    "scheduler.reduction_factor": "reduction_factor",
    "scheduler.brackets": "num_brackets",
    "scheduler.type": "search_algorithm",
    "searcher.type": "search_algorithm",
    "searcher.num_init_trials": "num_init_trials",
    "searcher.kappa": "kappa",
    "searcher.kappa_decay": "kappa_decay",
    "searcher.kappa_decay_delay": "kappa_decay_delay",
    "searcher.points_to_evaluate": "default_hyper_parameters",
    "limits.max_trials": "num_trials",
    "limits.max_concurrent": "num_workers",
    "limits.time_ratio": "expected_time_ratio",
    "limits.full_resource": "num_full_iterations",
    "oom.batch_size_key": "batch_size_name",
    "space": "hp_space",
}


def is_yaml_path(path: Path | str) -> bool:
    return Path(path).suffix.lower() in YAML_SUFFIXES


def looks_like_yaml(text: str) -> bool:
    """Whether text TOML refused is a YAML mapping instead (``key: value`` lines)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    return isinstance(raw, Mapping) and bool(raw)


def looks_like_toml(text: str) -> bool:
    """Whether text YAML refused (or read as no mapping) is a TOML document instead."""
    try:
        raw = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, ValueError, RecursionError):
        return False
    return bool(raw)


def _load(text: str, where: str) -> Mapping[str, Any]:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        if looks_like_toml(text):
            raise SpecError([_toml_in_yaml(where)]) from None
        raise SpecError([f"YAML syntax error: {exc}"]) from None
    if not isinstance(raw, Mapping):
        if looks_like_toml(text):
            raise SpecError([_toml_in_yaml(where)])
        raise SpecError(
            [f"expected a mapping of keys (OTX's hpo_config.yaml) at the top, got {type_name(raw)}"]
        )
    return raw


def _toml_in_yaml(where: str) -> str:
    return (
        f"{where} is named as YAML (OTX's hpo_config.yaml) but holds TOML, hpod's own spec "
        "format: name it .toml"
    )


def default_name(path: Path | None) -> str:
    stem = path.stem if path is not None else "hpo_config"
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", stem).lstrip("._-")[:64]
    return cleaned or "hpo_config"


def spec_mapping(
    text: str,
    *,
    path: Path | str | None = None,
    command: Sequence[str] | None = None,
    budget: bool = False,
) -> dict[str, Any]:
    """The tables of hpod's spec that an ``hpo_config.yaml`` makes; SpecError lists every
    problem by the file's key path. ``command``: the training command, when given outside the
    file (``hpodctl submit hpo_config.yaml -- python train.py``): it replaces the file's.
    ``budget``: whether the spec's [limits] takes the time budget (``time_ratio``,
    ``full_resource``), which then derives what the file leaves out."""
    p = Path(path) if path is not None else None
    raw = _load(text, str(p) if p is not None else "the file")
    return spec_from_raw(raw, path=p, command=command, budget=budget)


def spec_from_raw(
    raw: Mapping[str, Any],
    *,
    path: Path | None = None,
    command: Sequence[str] | None = None,
    budget: bool = False,
    external: bool = False,
) -> dict[str, Any]:
    """:func:`spec_mapping` of the file's keys already read (hpopt's ``create`` arguments, by
    ``hpod.compat.hpopt``). ``external``: the caller runs the trials (ask/tell), so there is
    no command and the spec's executor is external."""
    p = path
    problems: list[str] = []
    top = Section(raw, "", problems, _KEYS)
    for a, b in (
        ("search_algorithm", "search_alg"),
        ("hp_space", "search_space"),
        ("maximum_resource", "max_iterations"),
        ("minimum_resource", "min_iterations"),
    ):
        if top.has(a) and top.has(b):
            top.problem(b, f"the same as {a}; give one of them")

    def pick(a: str, b: str) -> str:
        return b if top.has(b) and not top.has(a) else a

    out: dict[str, Any] = {}
    out["name"] = top.string("name", default=default_name(p))
    if external:
        out["executor"] = {"type": "external"}
    elif command:
        out["command"] = list(command)
    elif top.has("command"):
        out["command"] = top.get("command")
    else:
        problems.append(
            "command: missing; give the training command after the file "
            "(hpodctl submit hpo_config.yaml -- python train.py ...) or as command: in it"
        )
    out["workdir"] = top.string("workdir", default=".")
    for key in ("env", "pass_env"):
        if top.has(key):
            out[key] = top.get(key)

    metric = top.string("metric", default=HPOPT_DEFAULTS["metric"])
    mode = top.string("mode", default=HPOPT_DEFAULTS["mode"])
    if mode not in ("max", "min", "max_global", "min_global"):
        top.problem("mode", f"{mode!r} is not one of max, min")
        mode = HPOPT_DEFAULTS["mode"]
    out["objective"] = {
        "metric": metric,
        "mode": mode,
        "resource": top.string("resource", default="epoch"),
    }

    space_key = pick("hp_space", "search_space")
    raw_space = top.get(space_key)
    if raw_space is None:
        problems.append(f"{space_key}: missing; list the hyperparameters to search")
        space: SearchSpace | None = None
    else:
        try:
            space = SearchSpace.from_mapping(raw_space, space_key)
        except SpecError as exc:
            problems.extend(exc.problems)
            space = None
        else:
            out["space"] = {str(k): dict(v) for k, v in raw_space.items()}

    alg_key = pick("search_algorithm", "search_alg")
    alg = top.string(alg_key, default=HPOPT_DEFAULTS["search_algorithm"])
    if alg not in _SEARCHERS:
        top.problem(alg_key, f"{alg!r} is not one of asha, bayes_opt (smbo)")
        alg = HPOPT_DEFAULTS["search_algorithm"]
    early_stop = raw.get("early_stop")
    if early_stop not in (None, False, "median_stop"):
        top.problem("early_stop", f"{early_stop!r} is not median_stop (or null)")
        early_stop = None

    max_key = pick("maximum_resource", "max_iterations")
    min_key = pick("minimum_resource", "min_iterations")
    max_r = top.integer(max_key, minimum=1)
    min_r = top.integer(min_key, minimum=1)
    full = top.integer("num_full_iterations", minimum=1)
    ratio = top.number(
        "expected_time_ratio", default=HPOPT_DEFAULTS["expected_time_ratio"], above=0
    )
    trials = top.integer("num_trials", minimum=1)
    rf = top.number("reduction_factor", default=HPOPT_DEFAULTS["reduction_factor"], above=1.0)
    brackets = top.integer("num_brackets", minimum=1)
    workers = top.integer("num_workers", default=HPOPT_DEFAULTS["num_workers"], minimum=1)
    # As hpopt: the time ratio configures only what the file leaves out (trials, epochs).
    budget = budget and (trials is None or max_r is None)
    if max_r is None and not budget:
        max_r = full or FALLBACK_FULL_RESOURCE
    if min_r is not None and max_r is not None and min_r > max_r:
        top.problem(min_key, f"{min_r} is more than {max_key} {max_r}")

    scheduler: dict[str, Any] = {}
    if alg == "asha":
        scheduler["type"] = "asha"
        scheduler["reduction_factor"] = rf
        if brackets is not None:
            scheduler["brackets"] = brackets
    elif early_stop == "median_stop":
        scheduler["type"] = "median"
    else:
        scheduler["type"] = "fifo"
    if max_r is not None:
        scheduler["max_resource"] = max_r
    if min_r is not None:
        scheduler["min_resource"] = min_r
    out["scheduler"] = scheduler

    searcher: dict[str, Any] = {"type": _SEARCHERS[alg]}
    if searcher["type"] == "bo":
        searcher["num_init_trials"] = top.integer(
            "num_init_trials", default=HPOPT_DEFAULTS["num_init_trials"], minimum=1
        )
        searcher["acquisition"] = "ucb"
        searcher["kappa"] = top.number("kappa", default=HPOPT_DEFAULTS["kappa"], at_least=0.0)
        searcher["kappa_decay"] = top.number(
            "kappa_decay", default=HPOPT_DEFAULTS["kappa_decay"], above=0.0, at_most=1.0
        )
        searcher["kappa_decay_delay"] = top.integer(
            "kappa_decay_delay", default=HPOPT_DEFAULTS["kappa_decay_delay"], minimum=0
        )
    else:
        for key in ("num_init_trials", "kappa", "kappa_decay", "kappa_decay_delay"):
            if top.has(key):
                top.problem(key, "only for search_algorithm bayes_opt (asha has no model)")
    points = _default_points(top, space)
    if points:
        searcher["points_to_evaluate"] = points
    out["searcher"] = searcher

    limits: dict[str, Any] = {"max_concurrent": workers}
    if trials is not None:
        limits["max_trials"] = trials
    if budget:
        limits["time_ratio"] = ratio
        if full is not None:
            limits["full_resource"] = full
        elif max_r is None:
            # The budget needs one full training's resource; a file with neither says nothing.
            limits["full_resource"] = FALLBACK_FULL_RESOURCE
    elif trials is None and max_r is not None:
        limits["max_trials"] = _fallback_trials(ratio, full or max_r, min_r or 1, max_r, rf, alg)
    out["limits"] = limits

    if top.has("subset_ratio"):
        subset = top.number("subset_ratio", default=1.0, above=0.0)
        if space is not None and "subset_ratio" in space:
            top.problem("subset_ratio", "is also a parameter of hp_space; give it once")
        elif "space" in out:
            # A fixed key of every trial's configuration (hpod.trial.subset reads it).
            out["space"]["subset_ratio"] = {"param_type": "choice", "range": [subset]}
            for point in out["searcher"].get("points_to_evaluate", ()):
                point["subset_ratio"] = subset

    batch = top.string("batch_size_name", default="")
    if batch:
        out["oom"] = {"batch_size_key": batch}
    top.finish()
    if problems:
        raise SpecError(problems)
    return out


def _default_points(top: Section, space: SearchSpace | None) -> list[dict[str, Any]]:
    raw = top.get("default_hyper_parameters")
    if raw is None:
        return []
    entries = [raw] if isinstance(raw, Mapping) else raw
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
        top.problem(
            "default_hyper_parameters",
            f"expected a mapping or a list of them, got {type_name(raw)}",
        )
        return []
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(entries):
        where = "default_hyper_parameters" + (f"[{i}]" if isinstance(raw, list) else "")
        if space is None:
            continue
        found = space.problems(entry, where)
        if found:
            top.problems.extend(found)
        else:
            out.append(dict(entry))
    return out


def _fallback_trials(ratio: float, full: int, min_r: int, max_r: int, rf: float, alg: str) -> int:
    """How many trials fit ``ratio`` x a full training of ``full`` resource units where no time
    budget is there to measure it: a fifo trial costs ``max_r``; an ASHA trial, on average, its
    first rung plus each further rung's stretch times the share promoted there (1/rf per rung)."""
    budget = ratio * full
    if alg != "asha":
        return max(1, math.floor(budget / max_r))
    per_trial, below, level, share = 0.0, 0.0, float(min_r), 1.0
    while True:
        level = min(level, float(max_r))
        per_trial += (level - below) * share
        if level >= max_r:
            break
        below, level, share = level, level * rf, share / rf
    return max(1, math.floor(budget / per_trial))


def spec_toml(
    text: str,
    *,
    path: Path | str | None = None,
    command: Sequence[str] | None = None,
    budget: bool = False,
) -> str:
    """The TOML spec an ``hpo_config.yaml`` makes (what is submitted and stored). Its own checks
    are :class:`~hpod.core.spec.StudySpec`'s, whose problems :func:`back` words by the file's
    keys."""
    mapping = spec_mapping(text, path=path, command=command, budget=budget)
    return _header(path) + to_toml(mapping)


def _header(path: Path | str | None) -> str:
    source = Path(path).name if path is not None else "an hpo_config.yaml"
    return f"# Made by hpod from {source} (OTX's format; see docs/otx.md).\n"


def back(problem: str) -> str:
    """A problem of the spec made, by the key the file wrote."""
    for ours, theirs in sorted(_BACK.items(), key=lambda kv: -len(kv[0])):
        if problem == ours or problem.startswith((ours + ":", ours + ".", ours + "[")):
            return theirs + problem[len(ours) :]
    return problem
