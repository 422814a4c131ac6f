"""/openapi.json describes what a client of waits, progress and a full or write-refusing Redis must know."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.conftest import AUTH

WRITES = ("post", "put", "patch", "delete")


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json", headers=AUTH)
    assert response.status_code == 200
    return response.get_json()


def schema(document: dict[str, Any], ref: str) -> dict[str, Any]:
    return document["components"]["schemas"][ref.rsplit("/", 1)[1]]


def test_get_job_documents_wait_with_its_bounds_and_the_retry_after_of_a_wait_held_back(
    document: dict[str, Any],
) -> None:
    operation = document["paths"]["/jobs/{job_id}"]["get"]
    (wait,) = [p for p in operation["parameters"] if p["name"] == "wait" and p["in"] == "query"]
    assert {"gt": 0, "le": 60.0, "type": "number"} in wait["schema"]["anyOf"]
    answer = operation["responses"]["200"]
    assert "Retry-After" in answer["headers"] and "wait" in answer["description"]


def test_every_job_answer_documents_progress(document: dict[str, Any]) -> None:
    jobs = [found for name, found in document["components"]["schemas"].items() if "JobOut" in name.split(".")]
    assert len(jobs) >= 3  # a job, a page of jobs, a batch's jobs
    for job in jobs:
        assert "null until set" in job["properties"]["progress"]["description"]


def test_every_write_documents_the_503s_of_a_full_or_write_refusing_redis_with_retry_after(
    document: dict[str, Any],
) -> None:
    writes = [(p, m, op) for p, ops in document["paths"].items() for m, op in ops.items() if m in WRITES]
    assert len(writes) >= 5
    for path, method, operation in writes:
        refusal = operation["responses"]["503"]
        for code in ("redis_unavailable", "redis_full", "redis_read_only"):
            assert code in refusal["description"], (method, path, code)
        assert "Retry-After" in refusal["headers"], (method, path)
        error = schema(document, refusal["content"]["application/json"]["schema"]["$ref"])
        body = schema(document, error["properties"]["error"]["$ref"])
        assert "redis_full" in body["properties"]["code"]["description"]


def test_enqueues_document_the_retry_after_of_a_full_lane(document: dict[str, Any]) -> None:
    for path in ("/jobs", "/jobs/batch"):
        refusal = document["paths"][path]["post"]["responses"]["429"]
        assert "queue_full" in refusal["description"] and "Retry-After" in refusal["headers"]
