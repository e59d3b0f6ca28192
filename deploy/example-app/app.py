"""An example app using the OpenAI SDK through the ctxwarden sidecar.

The only change an app needs is the SDK's base URL: here OPENAI_BASE_URL
(http://ctxwarden:8788/v1 in compose, http://127.0.0.1:8788/v1 in a
Kubernetes pod, where the sidecar shares the pod's network). The API key is
the app's own; ctxwarden forwards it.

    OPENAI_API_KEY=sk-... OPENAI_BASE_URL=http://127.0.0.1:8788/v1 python app.py --once
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from openai import OpenAI


def ask(client: OpenAI, model: str, question: str) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "system", "content": "Answer in one sentence."},
                               {"role": "user", "content": question}])
    answer = raw.parse()
    before, after = raw.headers.get("x-ctxwarden-tokens-before"), raw.headers.get("x-ctxwarden-tokens-after")
    print(f"[{raw.headers.get('x-ctxwarden-rewrite', '-')}] input tokens {before} -> {after}: "
          f"{answer.choices[0].message.content}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--once", action="store_true", help="ask one question and exit")
    parser.add_argument("--interval", type=float, default=float(os.environ.get("EXAMPLE_INTERVAL", "30")))
    args = parser.parse_args()
    client = OpenAI(base_url=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8788/v1"))
    model = os.environ.get("EXAMPLE_MODEL", "gpt-4o-mini")
    question = os.environ.get("EXAMPLE_QUESTION", "What does a reverse proxy do?")
    while True:
        try:
            ask(client, model, question)
        except Exception as exc:  # keep the example running through upstream hiccups
            print(f"request failed: {exc}", file=sys.stderr, flush=True)
            if args.once:
                return 1
        if args.once:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
