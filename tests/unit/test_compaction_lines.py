"""Which output lines a compacted step keeps (compaction._says_something):
three letters or digits outside markup, as str.isalnum counts them. The test
holds the regex that answers it to that definition, character by character."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ctxwarden.pipeline.compaction import _TAG_RE, _says_something

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
