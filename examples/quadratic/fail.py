"""The tests' failing trial: writes "boom: deliberate failure for the tests" to stderr and exits
3 whenever the config key `fail` is true, which it is by default here.

With `fail = false` (or "false") it is the ordinary quadratic trial (trial.py), so one study can
mix failing and succeeding trials through a `fail` choice parameter.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from hpod import trial


def load_quadratic():
    # By path: a plain `import trial` would be ambiguous next to `from hpod import trial`.
    spec = importlib.util.spec_from_file_location("quadratic", Path(__file__).with_name("trial.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    quadratic = load_quadratic()
    if quadratic.truthy(trial.config(defaults={"fail": True})["fail"]):
        quadratic.fail()
    sys.exit(quadratic.main())
