"""A small JSON client over Flask's test client, for API tests."""

from __future__ import annotations

import json
from typing import Any

from flask.testing import FlaskClient

from tests.conftest import AUTH


class Api:
    """Calls the API with the test token and returns (status, body)."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def post(self, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body)
        headers = {**AUTH, "Content-Type": "application/json"} if data is not None else AUTH
        response = self.client.post(path, data=data, headers=headers)
        return response.status_code, response.get_json()

    def get(self, path: str) -> tuple[int, Any]:
        response = self.client.get(path, headers=AUTH)
        return response.status_code, response.get_json()

    def job(self, job_id: str) -> dict[str, Any]:
        status, body = self.get(f"/jobs/{job_id}")
        assert status == 200, body
        return body

    def enqueue(self, **body: Any) -> dict[str, Any]:
        status, job = self.post("/jobs", body)
        assert status == 202, job
        return job
