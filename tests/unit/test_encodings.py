"""The shipped encodings: offline, hash-checked, identical to tiktoken's."""
import dataclasses
import gzip
from importlib import resources

import pytest
import tiktoken
import tiktoken.load
from tiktoken_ext import openai_public

from ctxwarden import encodings, tokens
from ctxwarden.encodings import BUNDLED, EncodingFileError, load_bundled, read_ranks
from ctxwarden.tokens import count_text, get_encoding


@pytest.mark.parametrize("name", sorted(BUNDLED))
def test_pattern_special_tokens_and_hash_are_tiktokens_own(name, monkeypatch):
    """tiktoken's constructor for the name, with its download replaced by a spy:
    the split pattern, special tokens and the file hash it expects are ours."""
    seen = {}

    def spy(url, expected_hash=None):
        seen["url"], seen["hash"] = url, expected_hash
        return {}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", spy)
    theirs = openai_public.ENCODING_CONSTRUCTORS[name]()
    ours = BUNDLED[name]
    assert seen["url"].endswith(f"/{name}.tiktoken")
    assert ours.sha256 == seen["hash"]
    assert ours.pat_str == theirs["pat_str"]
    assert ours.special_tokens == theirs["special_tokens"]


def test_loading_never_downloads(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("tried to download an encoding file")

    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", no_network)
    for name in BUNDLED:
        assert load_bundled(name).name == name


@pytest.mark.parametrize("name, text, ids", [
    # token ids tiktoken's own tests pin for these encodings
    ("cl100k_base", "hello world", [15339, 1917]),
    ("o200k_base", "hello world", [24912, 2375]),
])
def test_exact_ids(name, text, ids):
    assert get_encoding(name).encode_ordinary(text) == ids


def test_o200k_counts_differ_from_cl100k_where_the_vocabularies_do():
    text = "Программирование на Python — это весело. " * 20
    assert count_text(text, "o200k_base") < count_text(text, "cl100k_base")


def test_the_old_offline_name_is_an_alias_of_cl100k():
    assert get_encoding("cl100k_base_offline") is get_encoding("cl100k_base")
    assert count_text("hello world", "cl100k_base_offline") == 2


def _file_bytes(name: str) -> bytes:
    return gzip.decompress(resources.files("ctxwarden").joinpath("data", BUNDLED[name].file).read_bytes())


def test_a_file_that_is_not_the_published_one_is_refused():
    data = bytearray(_file_bytes("cl100k_base"))
    data[100] ^= 1
    with pytest.raises(EncodingFileError) as caught:
        read_ranks(bytes(data), BUNDLED["cl100k_base"].sha256, "cl100k_base.tiktoken")
    message = str(caught.value)
    assert "cl100k_base.tiktoken" in message and BUNDLED["cl100k_base"].sha256 in message
    assert "refusing" in message


def test_a_wrong_hash_stops_get_encoding_instead_of_falling_back(monkeypatch, caplog):
    spec = BUNDLED["o200k_base"]
    monkeypatch.setitem(BUNDLED, "o200k_base", dataclasses.replace(spec, sha256="0" * 64))
    monkeypatch.delitem(tokens._encodings, "o200k_base", raising=False)
    with pytest.raises(EncodingFileError, match="not the published 0000"):
        get_encoding("o200k_base")
    assert "o200k_base" not in tokens._encodings  # nothing half-loaded stays cached


def test_a_missing_file_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(BUNDLED, "o200k_base", dataclasses.replace(BUNDLED["o200k_base"], file="gone.tiktoken.gz"))
    with pytest.raises(EncodingFileError, match="cannot read the o200k_base encoding file"):
        load_bundled("o200k_base")


def test_config_names_shipped_aliases_and_tiktokens_own():
    names = encodings.known_names()
    assert {"cl100k_base", "o200k_base", "cl100k_base_offline"} <= set(names)
    assert set(tiktoken.list_encoding_names()) <= set(names)
