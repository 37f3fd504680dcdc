"""Shell completion: `usertunnel completion bash` prints a bash script generated from the command line's parser.

shtab writes the completion of every command and option from the argparse parser
itself, so a new option completes without anyone touching this file. What argparse
cannot describe is `usertunnel [-6] tunnel ...`: its words are ip tunnel's grammar,
one REMAINDER argument to argparse. For those the script gets one more bash
function, written here from the grammar's own tables in iptunnel.py (the commands,
the keywords of each grammar and which of them take a value, the mode words, the
TOS names), so the two cannot drift apart.

Install: `usertunnel completion bash > /etc/bash_completion.d/usertunnel` (or source
it from ~/.bashrc).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shlex
from collections.abc import Iterable, Mapping

import shtab

from . import iptunnel

SHELLS = ("bash",)
FUNCTION = "_usertunnel_tunnel_words"


def _takes_value(handler: iptunnel.Handler) -> bool:
    """Whether a keyword's handler reads the word after it (`key K`) or is a flag on its own (`seq`)."""
    words = iptunnel._Words(["x"])
    with contextlib.suppress(iptunnel.IpTunnelError):  # "x" is no value it accepts, but it was read
        handler(words, iptunnel._State())
    return not words


def _accepts(handler: iptunnel.Handler, value: str) -> bool:
    try:
        handler(iptunnel._Words([value]), iptunnel._State())
    except iptunnel.IpTunnelError:
        return False
    return True


# Value words worth offering after a keyword, each offered where the keyword's handler accepts it
# (`ttl inherit` in ip tunnel, not `hoplimit inherit` in ip -6 tunnel; the TOS names only for `tos`).
_VALUE_WORDS = ("inherit", "none", "any", *iptunnel.DSFIELD_NAMES)


def _array(name: str, words: Iterable[str]) -> str:
    return f"{name}=({' '.join(shlex.quote(w) for w in words)})"


def _plain(words: Iterable[str]) -> list[str]:
    """Words a person types; iproute2's spellings such as `gre/ip` are accepted but not offered."""
    return [w for w in words if "/" not in w]


def _refused(handler: iptunnel.Handler) -> bool:
    """Whether a keyword sets what usertunnel keeps only to refuse it (`allow-localremote`: EXTRA_KEYS)."""
    state = iptunnel._State()
    with contextlib.suppress(iptunnel.IpTunnelError):
        handler(iptunnel._Words(["inherit"]), state)
    return any(key in state.table for key in iptunnel.EXTRA_KEYS)


def _keywords(table: Mapping[str, iptunnel.Handler], grammar: int) -> tuple[list[str], list[str], list[str]]:
    """A grammar's keywords but those usertunnel refuses, those of them that take a value, and an array for
    each keyword's value words."""
    table = {word: handler for word, handler in table.items() if not _refused(handler)}
    valued = [w for w, handler in table.items() if _takes_value(handler)]
    arrays = []
    for word in valued:
        if word not in ("mode", "dev"):  # the mode words and the devices are offered as such
            values = [v for v in _VALUE_WORDS if _accepts(table[word], v)]
            if values:
                arrays.append(_array(f"_usertunnel_tunnel_values{grammar}_{_wordify(word)}", values))
    return list(table), valued, arrays


def _wordify(word: str) -> str:
    """A keyword as part of a bash variable name (as bash's ${word//[^[:word:]]/_})."""
    return re.sub(r"\W", "_", word)


def _6rd_words() -> tuple[list[str], list[str]]:
    """The `6rd` command's words, from its usage line (`[ 6rd-prefix ADDR ]` takes a value, `[ 6rd-reset ]` not)."""
    found = re.findall(r"\[ (6rd-[\w-]+)( [A-Z_]+)? \]", iptunnel.HELP)
    return [w for w, _ in found] + ["dev"], [w for w, value in found if value] + ["dev"]


def tunnel_function() -> str:
    """The bash function that completes the words after `usertunnel [-6] tunnel`, as ip tunnel reads them."""
    words4, valued4, values4 = _keywords(iptunnel._WORDS4, 4)
    words6, valued6, values6 = _keywords(iptunnel._WORDS6, 6)
    prl = [*iptunnel._PRL_WORDS, "dev"]
    sixrd, sixrd_valued = _6rd_words()
    modes6 = _plain(iptunnel._MODE_WORDS6)
    modes4 = _plain(iptunnel._MODE_WORDS4) + [m for m in modes6 if m != "any"]  # IPv6 modes hand over to -6
    commands4 = [f"{keyword}={action}" for keyword, action in iptunnel._COMMANDS4]
    commands6 = [f"{keyword}={action}" for keyword, action in iptunnel._COMMANDS6]
    arrays = "\n".join(
        [
            _array("_usertunnel_tunnel_commands4", commands4),
            _array("_usertunnel_tunnel_commands6", commands6),
            _array("_usertunnel_tunnel_words4", words4),
            _array("_usertunnel_tunnel_words6", words6),
            _array("_usertunnel_tunnel_valued4", valued4),
            _array("_usertunnel_tunnel_valued6", valued6),
            _array("_usertunnel_tunnel_modes4", modes4),
            _array("_usertunnel_tunnel_modes6", modes6),
            _array("_usertunnel_tunnel_handed6", sorted(iptunnel._HANDED_TO_IPV6)),
            _array("_usertunnel_tunnel_prl", prl),
            _array("_usertunnel_tunnel_6rd", sixrd),
            _array("_usertunnel_tunnel_6rd_valued", sixrd_valued),
            *values4,
            *values6,
        ]
    )
    return (
        f"""
# The words of `usertunnel [-6] tunnel ...` (ip tunnel's grammar), from usertunnel/front/iptunnel.py's tables.
{arrays}

_usertunnel_in() {{  # _usertunnel_in WORD ARRAY_NAME: is WORD an element of the array?
  local element list="$2[@]"
  for element in "${{!list}}"; do [[ $element == "$1" ]] && return 0; done
  return 1
}}

# $1=the word being completed; the words before it come from COMP_WORDS and COMP_CWORD.
{FUNCTION}() {{
  local cur="$1" i start=0 grammar=4 word action=""
  for ((i = 1; i < COMP_CWORD; i++)); do
    word="${{COMP_WORDS[i]}}"
    case "$word" in
      -6) grammar=6 ;;
      -4) grammar=4 ;;
      tunnel) start=$((i + 1)); break ;;
    esac
  done
  ((start > 0)) || return 0
  local words=("${{COMP_WORDS[@]:start:COMP_CWORD-start}}")
  for ((i = 0; i + 1 < ${{#words[@]}}; i++)); do  # only the first `mode` word counts, as in ip
    if [[ ${{words[i]}} == mode ]]; then
      _usertunnel_in "${{words[i + 1]}}" _usertunnel_tunnel_handed6 && grammar=6
      break
    fi
  done
  local commands="_usertunnel_tunnel_commands$grammar[@]"
  if ((${{#words[@]}} == 0)); then
    local names=() pair
    for pair in "${{!commands}}"; do names+=("${{pair%%=*}}"); done
    compgen -W "${{names[*]}}" -- "$cur"
    return 0
  fi
  for pair in "${{!commands}}"; do  # the command by prefix, in ip's order ("d" is delete)
    if [[ -n ${{words[0]}} && ${{pair%%=*}} == "${{words[0]}}"* ]]; then action="${{pair#*=}}"; break; fi
  done
  local keywords valued prev="${{words[${{#words[@]}} - 1]}}"
  case "$action" in
    prl) keywords=_usertunnel_tunnel_prl valued=_usertunnel_tunnel_prl ;;
    6rd) keywords=_usertunnel_tunnel_6rd valued=_usertunnel_tunnel_6rd_valued ;;
    add | change | del | show) keywords=_usertunnel_tunnel_words$grammar valued=_usertunnel_tunnel_valued$grammar ;;
    *) return 0 ;;
  esac
  if ((${{#words[@]}} > 1)) && _usertunnel_in "$prev" "$valued"; then
    case "$prev" in  # the value of a keyword: offered where there is a list of them
      mode) local modes="_usertunnel_tunnel_modes$grammar[*]"; compgen -W "${{!modes}}" -- "$cur" ;;
      dev) compgen -W "$(ls /sys/class/net 2>/dev/null)" -- "$cur" ;;
      *) local values="_usertunnel_tunnel_values${{grammar}}_${{prev//[^[:word:]]/_}}[*]"
         [[ $action == prl || $action == 6rd ]] || compgen -W "${{!values-}}" -- "$cur" ;;
    esac
    return 0
  fi
  local offered="$keywords[*]"
  compgen -W "${{!offered}}" -- "$cur"
}}
"""
    ).lstrip("\n")


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for `shell` of the command line `parser` describes."""
    if shell not in SHELLS:
        raise ValueError(f"no completion for shell {shell!r}: {', '.join(SHELLS)}")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and "tunnel" in action.choices:
            tunnel = action.choices["tunnel"]
            words = next(a for a in tunnel._actions if a.dest == "words")
            words.complete = {shell: FUNCTION, "preamble": {shell: tunnel_function()}}  # shtab reads .complete
    return shtab.complete(parser, shell)
