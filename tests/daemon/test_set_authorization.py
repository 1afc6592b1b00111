"""Only a study's owner, root or a configured admin may change it with `set` (issue 14, item 2);
anyone may read it. The uids are faked at the SO_PEERCRED seam, as in test_authorization.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpod.errors import InvalidParams, PermissionDenied
from tests.daemon.test_authorization import SPEC, Uids, call_as, daemon, root

__all__ = ["daemon", "root"]  # the fixtures, used by name


@pytest.mark.anyio
async def test_only_the_owner_root_or_an_admin_may_change_a_study(
    daemon: tuple[str, Uids], root: Path
) -> None:
    path, uids = daemon
    sid = (await call_as(path, uids, 1000, "submit", {"spec": SPEC, "base_dir": str(root)}))[
        "study"
    ]
    with pytest.raises(PermissionDenied, match="belongs to uid 1000"):
        await call_as(path, uids, 2000, "set", {"study": sid, "changes": {"priority": 5}})
    detail = await call_as(path, uids, 2000, "study", {"study": sid})
    assert detail["spec"]["priority"] == 1
    assert detail["changes"] == []
    for uid, priority in ((1000, 2), (0, 3), (4242, 4)):
        params = {"study": sid, "changes": {"priority": priority}}
        result = await call_as(path, uids, uid, "set", params)
        assert result["changes"][-1]["by"] == uid
    # A value the study already has changes nothing, and is not listed.
    same = await call_as(path, uids, 1000, "set", {"study": sid, "changes": {"priority": 4}})
    assert len(same["changes"]) == 3
    assert same["made"] == []
    detail = await call_as(path, uids, 2000, "study", {"study": sid})
    assert detail["spec"]["priority"] == 4
    assert [(c["from"], c["value"], c["by"]) for c in detail["changes"]] == [
        (1, 2, 1000),
        (2, 3, 0),
        (3, 4, 4242),
    ]
    await call_as(path, uids, 0, "stop", {"study": sid})


@pytest.mark.anyio
async def test_bad_changes_are_refused_naming_the_key(daemon: tuple[str, Uids], root: Path) -> None:
    path, uids = daemon
    sid = (await call_as(path, uids, 1000, "submit", {"spec": SPEC, "base_dir": str(root)}))[
        "study"
    ]
    cases = [
        ({"optimization_time": "soon"}, "optimization_time: cannot read 'soon' as a duration"),
        ({"max_concurrent": -1}, "max_concurrent: must be a positive integer"),
        ({"priority": "high"}, "priority: must be an integer >= 0"),
        ({"deadline": "tomorrow"}, "deadline: cannot read 'tomorrow' as a moment"),
        ({"deadline": 3600}, "deadline: 3600 is .* a duration"),
        ({"max_trial": 3}, "max_trial: unknown key; did you mean 'max_trials'"),
        ({}, "at least one"),
    ]
    for changes, message in cases:
        with pytest.raises(InvalidParams, match=message):
            await call_as(path, uids, 1000, "set", {"study": sid, "changes": changes})
    detail = await call_as(path, uids, 1000, "study", {"study": sid})
    assert detail["changes"] == []
    await call_as(path, uids, 0, "stop", {"study": sid})
