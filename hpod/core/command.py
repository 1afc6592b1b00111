"""A study's command line: its ``{key}`` placeholders and how a trial's values fill them.

The rules are written once, here, and used twice: the spec checks a command with
:func:`command_problems` when the study is submitted, and the daemon fills it with
:func:`render_command` when a trial starts. The check fills every placeholder with values its
parameter can take (every choice, both ends of a range, the reserved names' kinds) through the
same code, so a command that would fail at launch is refused at submit instead: at launch it
would fail every trial of the study, long after its owner stopped watching.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpod.core.problems import did_you_mean
from hpod.errors import HpodError

__all__ = [
    "RESERVED_PLACEHOLDERS",
    "CommandError",
    "ConfigValue",
    "Placeholder",
    "command_problems",
    "format_value",
    "parse_argument",
    "placeholders",
    "render_command",
]

ConfigValue = float | int | str | bool

# Placeholders the daemon fills in besides the configuration's own keys. A [space] parameter of
# the same name would be shadowed by them, so space.py refuses such names.
RESERVED_PLACEHOLDERS = ("trial_id", "trial_dir", "checkpoint_dir")

# What the reserved placeholders hold, for the check at submit: a trial number and two paths.
_RESERVED_EXAMPLES: dict[str, tuple[ConfigValue, ...]] = {
    "trial_id": (0,),
    "trial_dir": ("/state/studies/s/trials/0",),
    "checkpoint_dir": ("/state/studies/s/trials/0/checkpoint",),
}

_FORMATTER = string.Formatter()


class CommandError(HpodError):
    """A command whose placeholders cannot be filled with a trial's values."""


def format_value(value: ConfigValue) -> str:
    """How a configuration value is written into a command line (a placeholder with no format)."""
    # bool before int: bool is an int subclass. Lower case matches TOML and JSON, which is how
    # the user wrote the value in the spec and how HPOD_CONFIG shows it.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # shortest round-tripping form: 0.001, not 0.0010000000000000002
    return str(value)


@dataclass(frozen=True, slots=True)
class Placeholder:
    """One ``{name!conversion:spec}`` field of a command argument."""

    name: str
    spec: str = ""
    conversion: str | None = None

    def __str__(self) -> str:
        conversion = f"!{self.conversion}" if self.conversion else ""
        spec = f":{self.spec}" if self.spec else ""
        return f"{{{self.name}{conversion}{spec}}}"

    def fill(self, value: ConfigValue) -> str:
        """The text for ``value``; ValueError when the conversion or format does not apply."""
        if not self.conversion and not self.spec:
            return format_value(value)
        # An explicit format (`{lr:.2e}`) applies to the value itself, as str.format would.
        try:
            if self.conversion:
                value = _FORMATTER.convert_field(value, self.conversion)
            return format(value, self.spec)
        except (TypeError, OverflowError) as exc:  # `{x:c}` past U+10FFFF is an OverflowError
            raise ValueError(str(exc)) from exc


def parse_argument(arg: str) -> list[tuple[str, Placeholder | None]]:
    """``arg`` as (literal text, the placeholder after it or None) pairs.

    ``{{`` and ``}}`` are literal braces; ValueError for an unbalanced one.
    """
    return [
        (literal, None if name is None else Placeholder(name, spec or "", conversion))
        for literal, name, spec, conversion in _FORMATTER.parse(arg)
    ]


def placeholders(arg: str) -> list[str]:
    """The ``{key}`` names in one command argument; ValueError for an unbalanced brace."""
    return [field.name for _, field in parse_argument(arg) if field is not None]


def render_command(
    command: Sequence[str],
    config: Mapping[str, ConfigValue],
    *,
    trial_id: int,
    trial_dir: Path | str,
    checkpoint_dir: Path | str,
) -> list[str]:
    """Fill `{key}` placeholders in each argument; raise CommandError for one that cannot be.

    A spec that passed :func:`command_problems` does not raise here.
    """
    values: dict[str, ConfigValue] = dict(config)
    # The documented names win over a configuration key that happens to share one.
    values.update(trial_id=trial_id, trial_dir=str(trial_dir), checkpoint_dir=str(checkpoint_dir))
    known = ", ".join(sorted(values))
    out: list[str] = []
    for index, arg in enumerate(command):
        try:
            parsed = parse_argument(arg)
        except ValueError as exc:
            raise CommandError(
                f"command argument {index} {arg!r} has a malformed placeholder ({exc}); "
                "write a literal brace as '{{' or '}}'"
            ) from exc
        pieces: list[str] = []
        for literal, field in parsed:
            pieces.append(literal)
            if field is None:
                continue
            if field.name not in values:
                raise CommandError(
                    f"unknown placeholder {{{field.name}}} in command argument {index} {arg!r}; "
                    f"known placeholders: {known}"
                )
            try:
                pieces.append(field.fill(values[field.name]))
            except ValueError as exc:
                raise CommandError(
                    f"cannot format placeholder {{{field.name}}} in command argument {index} "
                    f"{arg!r}: {exc}"
                ) from exc
        out.append("".join(pieces))
    return out


def command_problems(
    command: Sequence[str], examples: Mapping[str, Sequence[ConfigValue]]
) -> list[str]:
    """Every problem that would stop :func:`render_command` filling ``command``, by key path.

    ``examples`` has an entry for each [space] key: values that between them take every form
    the parameter's values take (each choice; a range's two ends, ints where the trial gets
    ints). A key with no examples is known, but its formats go unchecked.
    """
    reserved = sorted(RESERVED_PLACEHOLDERS)
    allowed = [*examples, *reserved]
    tries: dict[str, Sequence[ConfigValue]] = {**examples, **_RESERVED_EXAMPLES}
    out: list[str] = []
    for index, arg in enumerate(command):
        try:
            parsed = parse_argument(arg)
        except ValueError as exc:
            out.append(f"command: {arg!r}: {exc} (write {{{{ and }}}} for literal braces)")
            continue
        for _, field in parsed:
            if field is None:
                continue
            if field.name == "":
                out.append(f"command: {arg!r} has an empty placeholder {{}}")
            elif field.name not in allowed:
                out.append(
                    f"command: placeholder {{{field.name}}} is not a key of [space] nor one of "
                    f"{', '.join(reserved)}{did_you_mean(field.name, allowed)}"
                )
            else:
                problem = _fill_problem(field, tries[field.name])
                if problem:
                    out.append(f"command[{index}]: {problem}")
    return out


def _fill_problem(field: Placeholder, values: Sequence[ConfigValue]) -> str | None:
    for value in values:
        try:
            field.fill(value)
        except ValueError as exc:
            # The first value that fails is enough; naming it says which kind does not fit.
            return f"cannot format {field}: {exc} ({field.name} = {value!r})"
    return None
