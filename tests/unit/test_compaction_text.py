"""The text tests a compaction runs on every line of the steps it compacts,
held to their definitions: which output lines it keeps
(compaction._says_something: three letters or digits outside markup, as
str.isalnum counts them), the terms of a text (text.terms_of), and a line's
weight by the focus's identifiers (the sum over all its terms)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ctxwarden.pipeline.compaction import _TAG_RE, _says_something
from ctxwarden.pipeline.text import _SPLIT_RE, _TERM_RE, identifiers, terms_of

# letters and digits of several scripts and categories (isalnum: Lu Ll Lt Lm Lo Nd Nl No),
# the underscore \w also takes, marks and spaces it does not, and markup
PIECES = st.one_of(
    st.sampled_from(["<output>", "</output>", "<a-b>", "<_x>", "<", ">", "/", "_", "__", " ", "\t", "\u00a0",
                     "\u0301", "\r", "\n", "`", "-", "²", "½", "٣", "ǅ", "Ⅻ", "é", "x", "Z", "7", "ß", "中"]),
    st.characters(codec="utf-8"),
)


def _defined(line: str) -> bool:
    return sum(c.isalnum() for c in _TAG_RE.sub("", line)) >= 3


def test_kept_lines_are_those_with_three_letters_or_digits_outside_markup() -> None:
    outcomes = []

    @settings(max_examples=1500, deadline=None, database=None)
    @given(st.lists(PIECES, max_size=10).map("".join))
    def agrees(line: str) -> None:
        kept = _says_something(line)
        assert kept == _defined(line)
        outcomes.append(kept)

    agrees()
    assert outcomes.count(True) >= 200 and outcomes.count(False) >= 200, "too few lines of one kind"


def test_examples() -> None:
    assert not _says_something("")
    assert not _says_something("<output></output>")
    assert not _says_something("a_b")            # the underscore is no letter
    assert _says_something("<output>abc</output>")
    assert _says_something("٣٤٥")                # Arabic-Indic digits
    assert _says_something("½²x")                # numeric characters count, as isalnum counts them


NAME_PIECES = st.one_of(
    st.sampled_from(["foo", "Bar", "_x", "a1", "12", "345", "6.78", "./", "src/app.py", "a-b", "x:y", "path/to",
                     "camelCase", "snake_case", "v2.0.1", ".", "-", ":", "/", " ", "\n", "é", "__", "9x", "x9"]),
    st.text(alphabet="ab_1./:- ", max_size=6),
)


def _terms_defined(text: str) -> list[str]:
    out: dict[str, int] = {}
    for tok in dict.fromkeys(_TERM_RE.findall(text)):
        if len(tok) < 3:
            continue
        out[tok] = 1
        if not tok[0].isdigit() and _SPLIT_RE.search(tok):
            for part in _SPLIT_RE.split(tok):
                if len(part) >= 3:
                    out[part] = 1
    return list(out)


def test_terms_and_weights_are_as_defined() -> None:
    split = []

    @settings(max_examples=1000, deadline=None, database=None)
    @given(st.lists(NAME_PIECES, max_size=12).map("".join), st.lists(NAME_PIECES, max_size=12).map("".join))
    def agrees(line: str, focus: str) -> None:
        terms = list(terms_of(line))
        assert terms == _terms_defined(line)
        weights = {term: 1.0 + k / 7 for k, term in enumerate(identifiers(focus + " " + line))}
        assert sum(weights.get(t, 0.0) for t in terms_of(line)) == sum(weights.get(t, 0.0)
                                                                       for t in identifiers(line))
        split.append(any(_SPLIT_RE.search(t) for t in terms))

    agrees()
    assert split.count(True) >= 150, "too few texts with a name that has parts"
