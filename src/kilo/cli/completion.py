"""Shell completion for ``kgctl`` (and ``kubectl kilo``), made from its argparse parser, so a new
flag or subcommand completes without anyone editing a script: ``kgctl completion bash|zsh|fish``
prints the script to source.

The scripts are static: subcommands and flags, and the values of flags with choices. Node and
Peer names are not completed (that would mean a call to the API server at every TAB).
"""

from __future__ import annotations

import argparse
import re
import shlex

SHELLS = ("bash", "zsh", "fish")
_SAFE = re.compile(r"^[A-Za-z0-9_.:/=|-]+$")  # what may appear unquoted in a generated script


def _word(s: str) -> str:
    if not _SAFE.match(s):
        raise ValueError(f"refusing to put {s!r} in a completion script")
    return s


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            return dict(a.choices)
    return {}


def _flags(p: argparse.ArgumentParser) -> list[str]:
    out: list[str] = []
    for a in p._actions:
        if a.help == argparse.SUPPRESS and not a.option_strings:
            continue
        out += [_word(o) for o in a.option_strings]
    return sorted(set(out))


def _choices(p: argparse.ArgumentParser) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for a in p._actions:
        if a.option_strings and a.choices and not isinstance(a, argparse._SubParsersAction):
            for o in a.option_strings:
                out[_word(o)] = [_word(str(c)) for c in a.choices]
    return out


def _paths(
    p: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command path ((), ("graph",), ("showconf", "node"), ...) with its parser."""
    out = [(path, p)]
    for name, sub in sorted(_subparsers(p).items()):
        out += _paths(sub, (*path, _word(name)))
    return out


def bash(p: argparse.ArgumentParser, prog: str) -> str:
    fn = "_" + re.sub(r"\W", "_", prog)
    cases: list[str] = []
    for path, sub in _paths(p):
        key = " ".join(path)
        words = " ".join(sorted(_subparsers(sub)) + _flags(sub))
        values = "".join(
            f'      {flag}) COMPREPLY=($(compgen -W {shlex.quote(" ".join(vals))} -- "$cur")); '
            "return ;;\n"
            for flag, vals in sorted(_choices(sub).items())
        )
        cases.append(
            f"    {shlex.quote(key)})\n"
            f'      case "$prev" in\n{values}      esac\n'
            f'      COMPREPLY=($(compgen -W {shlex.quote(words)} -- "$cur")) ;;'
        )
    subcommands = {n for path, s in _paths(p) for n in _subparsers(s)}
    names = " ".join(sorted(subcommands))
    body = "\n".join(cases)
    return f"""# {prog} completion for bash: source <({prog} completion bash)
{fn}() {{
  local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}} path="" w i
  for ((i = 1; i < COMP_CWORD; i++)); do
    w=${{COMP_WORDS[i]}}
    case " {names} " in *" $w "*) path="${{path:+$path }}$w" ;; esac
  done
  case "$path" in
{body}
    *) COMPREPLY=() ;;
  esac
}}
complete -F {fn} {shlex.quote(prog)}
"""


def zsh(p: argparse.ArgumentParser, prog: str) -> str:
    return (
        f"# {prog} completion for zsh: source <({prog} completion zsh)\n"
        "autoload -U +X bashcompinit && bashcompinit\n" + bash(p, prog).split("\n", 1)[1]
    )


def fish(p: argparse.ArgumentParser, prog: str) -> str:
    lines = [f"# {prog} completion for fish: {prog} completion fish | source"]
    lines.append(f"complete -c {prog} -f")
    for path, sub in _paths(p):
        if path:
            cond = " && ".join(f"__fish_seen_subcommand_from {w}" for w in path)
        else:
            cond = "not __fish_seen_subcommand_from " + " ".join(sorted(_subparsers(p)))
        cond = shlex.quote(cond)
        for name in sorted(_subparsers(sub)):
            lines.append(f"complete -c {prog} -n {cond} -a {name}")
        choices = _choices(sub)
        for flag in _flags(sub):
            opt = f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}"
            vals = choices.get(flag)
            extra = f" -x -a {shlex.quote(' '.join(vals))}" if vals else ""
            lines.append(f"complete -c {prog} -n {cond} {opt}{extra}")
    return "\n".join(lines) + "\n"


def script(p: argparse.ArgumentParser, prog: str, shell: str) -> str:
    prog = _word(prog)
    return {"bash": bash, "zsh": zsh, "fish": fish}[shell](p, prog)
