"""Detokenizers: undo the spacing that tokenized corpora put around punctuation.

`wikitext` reproduces lm-evaluation-harness's `wikitext_detokenizer` (lm_eval/tasks/wikitext/
preprocess_wikitext.py, 0.4.13) rule for rule and in the same order, so that our WikiText
figures are computed on the same text as lm-eval's; tests/test_eval.py checks it against
lm-eval's own function on the shared WikiText-2 file. It is written here as a table of rules,
not copied.
"""

from __future__ import annotations

import re
from collections.abc import Callable

Rule = Callable[[str], str]


def _replace(old: str, new: str) -> Rule:
    return lambda text: text.replace(old, new)


def _regex(pattern: str, replacement: str) -> Rule:
    compiled = re.compile(pattern)
    return lambda text: compiled.sub(replacement, text)


def _tighten(opening: str, closing: str) -> Rule:
    """Drop the spaces just inside a pair of brackets or quotes: `( a b )` -> `(a b)`; the
    shortest span from an opening mark to the next closing one."""
    pattern = re.escape(opening) + r"\s*([^" + re.escape(closing) + r"]*?)\s*" + re.escape(closing)
    return _regex(pattern, opening.replace("\\", "\\\\") + r"\1" + closing.replace("\\", "\\\\"))


# In order: each rule sees the output of the ones before it.
WIKITEXT_RULES: tuple[Rule, ...] = (
    # possessive plurals: "players ' club" -> "players' club"
    _replace("s '", "s'"),
    # lm-eval's pattern is the literal text /' 5/ (slashes included), rewritten as the literal
    # text /'[0-9]/; it almost never matches, and is kept so that the outputs stay equal.
    _regex(r"/' [0-9]/", "/'[0-9]/"),
    # number separators: 1 @,@ 000 -> 1,000; 3 @.@ 5 -> 3.5; well @-@ known -> well-known
    _replace(" @-@ ", "-"),
    _replace(" @,@ ", ","),
    _replace(" @.@ ", "."),
    # punctuation that WikiText surrounds with spaces
    *(_replace(f" {mark} ", f"{mark} ") for mark in ":;.!?,"),
    # brackets and quotes
    _tighten("(", ")"),
    _tighten("[", "]"),
    _tighten("{", "}"),
    _tighten('"', '"'),
    _tighten("'", "'"),
    # headings: "= = Career = =" -> "== Career =="
    _replace("= = = =", "===="),
    _replace("= = =", "==="),
    _replace("= =", "=="),
    _replace(" \N{DEGREE SIGN} ", "\N{DEGREE SIGN}"),
    # spaces at line ends and starts
    _replace(" \n", "\n"),
    _replace("\n ", "\n"),
    # PTB's number token (WikiText has none)
    _replace(" N ", " 1 "),
    _replace(" 's", "'s"),
)


def wikitext(text: str) -> str:
    """lm-evaluation-harness's WikiText detokenization of `text`."""
    for rule in WIKITEXT_RULES:
        text = rule(text)
    return text


def identity(text: str) -> str:
    return text
