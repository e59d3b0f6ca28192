"""Every other /v1/ path is forwarded untouched, bodies streamed both ways;
requests are routed by model pattern; paths outside /v1/ are 404."""

from __future__ import annotations

import hashlib
import os

import openai
import pytest

from tests.fake_upstream import download_bytes, expected_reply

from ._helpers import (
    ANTHROPIC_HEADERS,
    LOCAL_MODEL,
    OPENAI_MODEL,
    assert_anthropic_error,
    assert_openai_error,
)


def test_models_list_openai_sdk(openai_client, upstream):
    models = openai_client.models.list()
    ids = [m.id for m in models.data]
    assert "gpt-4o" in ids
    req = upstream.recorder.last
    assert req.method == "GET" and req.path == "/v1/models"
    assert req.header("anthropic-version") is None


def test_models_list_anthropic_sdk(anthropic_client, upstream):
    page = anthropic_client.models.list()
    assert [m.id for m in page.data] == ["claude-sonnet-4-5"]
    assert page.data[0].type == "model"
    assert upstream.recorder.last.header("anthropic-version")


def test_models_routes_no_token_headers(http, upstream):
    r = http.get("/v1/models")
    assert r.status_code == 200
    assert r.json()["object"] == "list"


def test_embeddings_sdk(openai_client, upstream):
    result = openai_client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"], dimensions=8)
    assert [d.index for d in result.data] == [0, 1]
    assert len(result.data[0].embedding) == 8
    sent = upstream.recorder.last
    assert sent.path == "/v1/embeddings"
    assert sent.json()["input"] == ["alpha", "beta"]


def test_file_upload_multipart_sdk(openai_client, upstream):
    payload = b'{"prompt": "a"}\n' * 5000 + os.urandom(4096).hex().encode()
    created = openai_client.files.create(file=("train.jsonl", payload, "application/jsonl"), purpose="fine-tune")
    sent = upstream.recorder.last
    assert sent.method == "POST" and sent.path == "/v1/files"
    assert sent.header("content-type").startswith("multipart/form-data; boundary=")
    assert payload in sent.body
    assert created.bytes == len(sent.body)
    assert created.filename == "train.jsonl" and created.purpose == "fine-tune"
    assert created.model_extra["body_sha256"] == hashlib.sha256(sent.body).hexdigest()


def test_large_streamed_upload(http, upstream):
    """A chunked upload bigger than any buffer is forwarded intact."""
    piece = os.urandom(64 * 1024)
    count = 160  # 10 MiB
    digest = hashlib.sha256(piece * count).hexdigest()

    def gen():
        for _ in range(count):
            yield piece

    r = http.post("/v1/uploads/upload_abc/parts", content=gen(), headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    echo = r.json()
    assert echo["body_length"] == len(piece) * count
    assert echo["body_sha256"] == digest
    assert echo["path"] == "/v1/uploads/upload_abc/parts"


def test_large_upload_with_content_length(http, upstream):
    body = os.urandom(3 * 1024 * 1024 + 17)
    r = http.put("/v1/blob/x", content=body, headers={"content-type": "application/octet-stream"})
    assert r.status_code == 200
    assert r.json()["body_sha256"] == hashlib.sha256(body).hexdigest()
    assert upstream.recorder.last.header("content-length") == str(len(body))


def test_large_request_header(http, upstream):
    big_header = "v" * 6000
    r = http.get("/v1/vector_stores?limit=1", headers={"x-big": big_header})
    assert r.status_code == 200
    assert ["x-big", big_header] in r.json()["headers"]


@pytest.mark.parametrize("framing", ["chunked", "length"])
@pytest.mark.parametrize("size", [10, 5 * 1024 * 1024 + 3])
def test_download_relayed_intact(http, upstream, framing, size):
    with http.stream(
        "GET",
        "/v1/files/file-abc/content",
        headers={"x-fake-response-bytes": str(size), "x-fake-response-framing": framing},
    ) as r:
        assert r.status_code == 200
        data = r.read()
    assert len(data) == size
    assert data == download_bytes(size)
    assert r.headers["x-body-sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("method", ["GET", "DELETE", "PATCH", "PUT", "POST"])
def test_methods_forwarded(http, upstream, method):
    r = http.request(method, "/v1/files/file-abc123", content=b"" if method in ("GET", "DELETE") else b'{"a":1}')
    assert r.status_code == 200, r.text
    echo = r.json()
    assert echo["method"] == method
    assert echo["path"] == "/v1/files/file-abc123"
    assert upstream.recorder.last.method == method


def test_non_chat_paths_under_messages_forwarded_to_anthropic(http, upstream):
    body = {"model": "claude-test-model", "messages": [{"role": "user", "content": "count me"}]}
    r = http.post("/v1/messages/count_tokens", json=body, headers=ANTHROPIC_HEADERS)
    assert r.status_code == 200
    assert upstream.recorder.last.path == "/v1/messages/count_tokens"
    assert upstream.recorder.last.json() == body


def test_batches_path_forwarded(http, upstream):
    r = http.get("/v1/messages/batches/msgbatch_1", headers=ANTHROPIC_HEADERS)
    assert r.status_code == 200
    assert r.json()["path"] == "/v1/messages/batches/msgbatch_1"


# ----------------------------------------------------------------------------- routing


def test_model_pattern_routes_to_local_upstream(openai_client, upstream, local_upstream):
    raw = openai_client.chat.completions.with_raw_response.create(
        model=LOCAL_MODEL, messages=[{"role": "user", "content": "local please"}]
    )
    assert raw.parse().choices[0].message.content == expected_reply("local please")
    assert raw.headers["x-fake-upstream"] == "local"
    assert len(local_upstream.recorder) == 1 and len(upstream.recorder) == 0
    assert local_upstream.recorder.last.header("host") == f"127.0.0.1:{local_upstream.port}"


def test_model_pattern_routes_streams_too(openai_client, upstream, local_upstream):
    stream = openai_client.chat.completions.create(
        model="llama-70b", messages=[{"role": "user", "content": "local stream"}], stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream) == expected_reply("local stream")
    assert local_upstream.recorder.wait_for(lambda rec: rec.streams_completed == 1), local_upstream.recorder
    assert len(upstream.recorder) == 0


def test_unmatched_model_goes_to_first_upstream_of_dialect(openai_client, upstream, local_upstream):
    raw = openai_client.chat.completions.with_raw_response.create(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": "main please"}]
    )
    assert raw.headers["x-fake-upstream"] == "main"
    assert len(upstream.recorder) == 1 and len(local_upstream.recorder) == 0


def test_anthropic_requests_go_to_anthropic_upstream(anthropic_client, upstream, local_upstream):
    anthropic_client.messages.create(
        model="llama-but-anthropic", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
    )
    assert len(upstream.recorder) == 1 and len(local_upstream.recorder) == 0


# ----------------------------------------------------------------------------- 404


@pytest.mark.parametrize("path", ["/", "/health", "/v2/chat/completions", "/chat/completions", "/v1"])
def test_unserved_paths_are_404_openai_shape(http, upstream, local_upstream, path):
    r = http.post(path, json={"model": OPENAI_MODEL, "messages": [{"role": "user", "content": "x"}]})
    assert_openai_error(r, 404)
    assert len(upstream.recorder) == 0 and len(local_upstream.recorder) == 0


def test_unserved_path_is_404_anthropic_shape(http, upstream):
    r = http.post("/messages", json={"model": "c", "messages": []}, headers=ANTHROPIC_HEADERS)
    err = assert_anthropic_error(r, 404)
    assert err["type"] == "not_found_error"
    assert len(upstream.recorder) == 0


def test_sdk_with_wrong_base_url_gets_not_found(proxy_url, upstream):
    client = openai.OpenAI(base_url=proxy_url, api_key="sk-test", max_retries=0)  # forgot the /v1
    try:
        with pytest.raises(openai.NotFoundError) as info:
            client.chat.completions.create(model=OPENAI_MODEL, messages=[{"role": "user", "content": "x"}])
    finally:
        client.close()
    assert info.value.status_code == 404
    assert isinstance(info.value.body, dict) and info.value.body.get("message")
    assert len(upstream.recorder) == 0


def test_health_endpoint(http):
    r = http.get("/_ctxwarden/health")
    assert r.status_code == 200
