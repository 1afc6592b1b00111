"""The study spec the end-to-end tests submit: the numpy test trial on a small grid whose optimum,
(0.3, -0.2), is a grid point; each test turns the knobs it needs."""

from __future__ import annotations

SPEC = """
name = "{name}"
command = ["python", "{script}"]
stop_grace_period = "{grace}"
priority = {priority}

[objective]
metric = "loss"
mode = "min"
resource = "step"

[space]
x = {{ param_type = "quniform", range = [-0.1, 0.5, 0.2] }}
y = {{ param_type = "choice", range = [-0.6, -0.2, 0.2] }}
{extra}

[scheduler]
type = "fifo"
max_resource = {steps}

[searcher]
type = "grid"
{points}

[resources]
gpus_per_trial = {gpus}
trials_per_gpu = {per_gpu}

[limits]
{limits}

[report]
period = "{period}"
{report}
"""


def spec(
    name: str,
    *,
    steps: int = 3,
    delay: float = 0.0,
    extra: str = "",
    limits: str = "",
    report: str = "",
    period: str = "1m",
    grace: str = "3s",
    gpus: int = 0,
    per_gpu: int = 1,
    priority: int = 1,
    script: str = "trial_quad.py",
    points: str = "",
) -> str:
    if delay:
        extra += f'\ndelay = {{ param_type = "choice", range = [{delay}] }}'
    return SPEC.format(
        name=name,
        script=script,
        grace=grace,
        priority=priority,
        extra=extra,
        steps=steps,
        gpus=gpus,
        per_gpu=per_gpu,
        limits=limits,
        period=period,
        report=report,
        points=points,
    )
