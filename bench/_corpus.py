"""The corpus the benchmarks replay: real agent transcripts, one conversation
per line ({"id", "messages"} in the OpenAI chat format).  It is not part of
the repository: the benchmarks look for it beside the repository, at
../shared/corpus/visible.jsonl, or take the file(s) named on the command line."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def read_corpus(paths: Iterable[str | Path]) -> list[dict]:
    """Every conversation of the JSONL files, or a one-line reason to stop."""
    conversations = []
    for path in paths:
        try:
            with open(path, encoding="utf-8") as lines:
                conversations += [json.loads(line) for line in lines if line.strip()]
        except OSError as exc:
            raise SystemExit(f"cannot read the corpus {path}: {exc.strerror}. The benchmark replays agent "
                             "transcripts, one JSON conversation ({\"id\", \"messages\"}) per line; it is not in "
                             "the repository: name a JSONL file of yours (see the script's --help)") from None
        except json.JSONDecodeError as exc:
            raise SystemExit(f"the corpus {path} is not JSONL: {exc}") from None
    return conversations
