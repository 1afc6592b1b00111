"""The command line's placeholders: one set of rules for the check at submit and the launch."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpod.core.command import (
    RESERVED_PLACEHOLDERS,
    CommandError,
    Placeholder,
    command_problems,
    parse_argument,
    render_command,
)
from hpod.errors import HpodError

# -- render_command (at launch) ---------------------------------------------------------------


def test_render_command_fills_values_and_reserved_names(tmp_path: Path) -> None:
    argv = render_command(
        ["train", "--lr={lr}", "--width", "{width}", "{opt}", "--bn={bn}", "--small={tiny}",
         "--id={trial_id}", "{trial_dir}/x", "--ckpt={checkpoint_dir}", "{{literal}}"],
        {"lr": 0.001, "width": 128, "opt": "adam", "bn": False, "tiny": 1e-05},
        trial_id=3,
        trial_dir=tmp_path / "t",
        checkpoint_dir=tmp_path / "t" / "c",
    )  # fmt: skip
    assert argv == [
        "train",
        "--lr=0.001",
        "--width",
        "128",
        "adam",
        "--bn=false",
        "--small=1e-05",
        "--id=3",
        f"{tmp_path / 't'}/x",
        f"--ckpt={tmp_path / 't' / 'c'}",
        "{literal}",
    ]


def test_render_command_dotted_names_and_literal_braces() -> None:
    argv = render_command(["--d={model.depth}", "{{literal}}"], {"model.depth": 3}, **RESERVED)
    assert argv == ["--d=3", "{literal}"]


def test_render_command_explicit_format_spec() -> None:
    argv = render_command(["{lr:.1e}", "{w:04d}"], {"lr": 0.00123, "w": 7}, **RESERVED)
    assert argv == ["1.2e-03", "0007"]


RESERVED: dict[str, object] = {"trial_id": 1, "trial_dir": "/t", "checkpoint_dir": "/c"}


def test_render_command_unknown_placeholder_is_named() -> None:
    with pytest.raises(HpodError, match=r"unknown placeholder \{lrr\}.*known placeholders: .*lr"):
        render_command(["train", "--lr={lrr}"], {"lr": 0.1}, **RESERVED)  # type: ignore[arg-type]


def test_render_command_malformed_brace() -> None:
    with pytest.raises(HpodError, match="malformed placeholder"):
        render_command(["--x={lr"], {"lr": 0.1}, **RESERVED)  # type: ignore[arg-type]


def test_a_value_a_format_cannot_take_is_a_command_error() -> None:
    with pytest.raises(
        CommandError, match=r"cannot format placeholder \{w\} in command argument 1"
    ):
        render_command(["run", "{w:04d}"], {"w": 0.5}, **RESERVED)  # type: ignore[arg-type]
    # Past U+10FFFF `c` raises OverflowError, not ValueError; it is a CommandError all the same.
    with pytest.raises(CommandError, match="cannot format"):
        render_command(["{n:c}"], {"n": 10**7}, **RESERVED)  # type: ignore[arg-type]


def test_the_runner_launches_with_the_cores_renderer() -> None:
    from hpod.daemon import runner

    assert runner.render_command is render_command


# -- command_problems (at submit) -----------------------------------------------------------------


def test_placeholders_parse_with_their_format_and_conversion() -> None:
    assert parse_argument("--lr={lr!r:>8}x") == [
        ("--lr=", Placeholder("lr", ">8", "r")),
        ("x", None),
    ]
    assert str(Placeholder("lr", ">8", "r")) == "{lr!r:>8}"
    assert str(Placeholder("model.depth")) == "{model.depth}"


def python_says(value: object, spec: str) -> str:
    """format()'s own complaint, whose wording changes between Python versions."""
    try:
        format(value, spec)
    except ValueError as exc:
        return str(exc)
    raise AssertionError(f"{spec!r} formats {value!r}")


def test_every_problem_is_listed_with_the_argument_it_is_in() -> None:
    found = command_problems(
        ["run", "{x:zz}", "{lrr}", "{x", "{}", "--id={trial_id:d}", "{trial_dir:d}", "{y}"],
        {"x": (0.0, 1.0), "lr": (0.1,), "y": ()},
    )
    trial_dir = "/state/studies/s/trials/0"
    assert found == [
        f"command[1]: cannot format {{x:zz}}: {python_says(0.0, 'zz')} (x = 0.0)",
        "command: placeholder {lrr} is not a key of [space] nor one of checkpoint_dir, "
        "trial_dir, trial_id; did you mean 'lr'?",
        "command: '{x': expected '}' before end of string (write {{ and }} for literal braces)",
        "command: '{}' has an empty placeholder {}",
        f"command[6]: cannot format {{trial_dir:d}}: {python_says(trial_dir, 'd')} "
        f"(trial_dir = {trial_dir!r})",
    ]  # {y} has no values to try (its range was refused): known, not checked


def test_what_the_check_passes_renders_for_every_value_it_tried() -> None:
    command = ["run", "{w:04d}", "{o!s:>6}", "{lr:.2e}", "{trial_id:05d}", "{checkpoint_dir}"]
    examples = {"w": (1, 64), "o": ("sgd", True), "lr": (1e-4, 0.1)}
    assert command_problems(command, examples) == []
    for i in range(2):
        config = {key: values[i] for key, values in examples.items()}
        argv = render_command(command, config, trial_id=7, trial_dir="/t", checkpoint_dir="/t/c")
        assert argv[1] == ("0001", "0064")[i]
    assert set(RESERVED_PLACEHOLDERS) == {"trial_id", "trial_dir", "checkpoint_dir"}
