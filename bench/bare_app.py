"""The peer of bench/http_enqueue.py: a bare Flask app that enqueues with RQ's own Queue, no auth, no validation.

Served by the same gunicorn settings (gunicorn.conf.py) as the service.
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, request
from redis import Redis
from rq import Queue

NOOP = "bench.worker_jobs.noop"

app = Flask(__name__)
queue = Queue("default", connection=Redis.from_url(os.environ["REDIS_URL"]))


@app.post("/jobs")
def create_job():
    body = request.get_json()
    job = queue.enqueue_call(NOOP, args=body.get("args", []))
    return jsonify({"id": job.id, "status": "queued"}), 202


@app.post("/jobs/batch")
def create_jobs():
    body = request.get_json()
    jobs = queue.enqueue_many([Queue.prepare_data(NOOP, args=j.get("args", [])) for j in body["jobs"]])
    return jsonify({"jobs": [{"id": job.id, "status": "queued"} for job in jobs]}), 202
