"""Small JSON clients for API tests: over Flask's test client (Api), or over HTTP to real gunicorn (HttpApi)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from typing import Any

from flask.testing import FlaskClient

from tests.conftest import AUTH, TOKEN


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


@dataclass
class Answer:
    """One HTTP answer from a real server: status, JSON body (None if not JSON) and headers."""

    status: int
    body: Any
    headers: Message


class HttpApi:
    """Calls a real server on a loopback port with the test token; never raises for an HTTP error status."""

    def __init__(self, port: int, token: str = TOKEN) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token = token

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Answer:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return Answer(response.status, _json(response.read()), response.headers)
        except urllib.error.HTTPError as exc:
            return Answer(exc.code, _json(exc.read()), exc.headers)

    def get(self, path: str, timeout: float = 10.0) -> Answer:
        return self.call("GET", path, timeout=timeout)

    def post(self, path: str, body: Any = None, timeout: float = 10.0) -> Answer:
        return self.call("POST", path, body, timeout=timeout)

    def put(self, path: str, body: Any) -> Answer:
        return self.call("PUT", path, body)


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return None
