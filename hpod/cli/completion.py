"""``hpodctl completion bash|zsh``: a shell completion script, made from hpodctl's own parser.

It completes the command names, each command's options and the global ones, a file for SPEC
and ``--socket``, and the daemon's study ids for STUDY (asked with ``hpodctl completion
--studies``, quiet and empty when no daemon answers). zsh runs the same script through its
``bashcompinit``. Install: ``hpodctl completion bash > ~/.local/share/bash-completion/completions/
hpodctl`` (or ``eval "$(hpodctl completion bash)"`` in ~/.bashrc).
"""

from __future__ import annotations

import argparse
import shlex

_BASH = """\
# bash completion for hpodctl (made by `hpodctl completion bash`)
_hpodctl() {
    local cur prev cmd i socket=""
    cur="${COMP_WORDS[COMP_CWORD]}"
    prev="${COMP_WORDS[COMP_CWORD-1]}"
    local -a positional=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${COMP_WORDS[i]}" in
            --socket) socket="${COMP_WORDS[i+1]}"; ((i++)) ;;
            @VALUED@) ((i++)) ;;
            -*) ;;
            *) positional+=("${COMP_WORDS[i]}") ;;
        esac
    done
    if [[ "$prev" == --socket ]]; then
        compopt -o filenames 2>/dev/null
        COMPREPLY=($(compgen -f -- "$cur"))
        return
    fi
    cmd="${positional[0]}"
    if [[ -z "$cmd" ]]; then
        COMPREPLY=($(compgen -W "@COMMANDS@ @GLOBAL@" -- "$cur"))
        return
    fi
    local opts="" kinds=""
    case "$cmd" in
@CASES@
    esac
    if [[ "$cur" == -* ]]; then
        COMPREPLY=($(compgen -W "$opts @GLOBAL@" -- "$cur"))
        return
    fi
    local -a kind=($kinds)
    case "${kind[${#positional[@]}-1]}" in
        file) compopt -o filenames 2>/dev/null; COMPREPLY=($(compgen -f -- "$cur")) ;;
        study)
            local studies ask=(command hpodctl ${socket:+--socket "$socket"})
            studies="$("${ask[@]}" completion --studies 2>/dev/null)"
            COMPREPLY=($(compgen -W "$studies" -- "$cur")) ;;
        *) COMPREPLY=() ;;
    esac
}
complete -F _hpodctl hpodctl
"""

_ZSH = """\
# zsh completion for hpodctl (made by `hpodctl completion zsh`): the bash one, through bashcompinit
autoload -U +X bashcompinit && bashcompinit
"""


def script(shell: str, commands: dict[str, argparse.ArgumentParser]) -> str:
    """The completion script for ``shell`` (bash or zsh) of these commands."""
    cases: list[str] = []
    valued: set[str] = set()
    global_opts = {"--socket", "--json", "--help", "-h"}
    for name, parser in sorted(commands.items()):
        opts: list[str] = []
        kinds: list[str] = []
        for action in parser._actions:
            if action.option_strings:
                opts.extend(o for o in action.option_strings if o not in global_opts)
                if action.nargs != 0 and action.option_strings[0] != "--socket":
                    valued.update(action.option_strings)
            elif action.metavar == "STUDY":
                kinds.append("study")
            elif action.metavar == "SPEC":
                kinds.append("file")
            else:
                kinds.append("other")
        cases.append(
            f"        {name}) opts={shlex.quote(' '.join(opts))}; "
            f"kinds={shlex.quote(' '.join(kinds))} ;;"
        )
    text = (
        _BASH.replace("@COMMANDS@", " ".join(sorted(commands)))
        .replace("@GLOBAL@", "--socket --json --help --version")
        .replace("@VALUED@", "|".join(sorted(valued)) or "--never")
        .replace("@CASES@", "\n".join(cases))
    )
    return (_ZSH + text) if shell == "zsh" else text
