"""The compatibility guard: every reach into RQ, rq-scheduler and rq-dashboard is listed, and still what was checked.

service.core.compat.REACHES names each library object the service
overrides, patches, copies or depends on, with a digest of its source as
checked. An upgrade that changes any of them fails here, naming the reach;
docs/upgrading-rq.md says how to re-check it and update the digest.
"""

from __future__ import annotations

import ast
import inspect
import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import rq.job
import rq.queue
import rq.registry
import rq.results
import rq.scheduler
import rq.utils
import rq_scheduler
from rq.worker import Worker
from rq.worker_pool import WorkerPool

from service.core import compat
from service.core.compat import REACHES, Reach
from service.jobs.model import ServiceJob, ServiceQueue
from service.schedules.scheduler import ServiceScheduler
from service.workers.delayed import DelayedJobs
from service.workers.pool import ServiceWorkerPool
from service.workers.worker import ServiceWorker
from tests.helpers import wait_until
from tests.processes import ROOT, Processes
from tests.reach import resolve

# Class attributes the libraries document as the way to extend them.
EXTENSION_POINTS = {"job_class", "queue_class"}
SUBCLASSES = [
    (ServiceWorker, Worker),
    (ServiceJob, rq.job.Job),
    (ServiceQueue, rq.queue.Queue),
    (ServiceWorkerPool, WorkerPool),
    (ServiceScheduler, rq_scheduler.Scheduler),
    (DelayedJobs, rq.scheduler.RQScheduler),
]


@pytest.fixture(scope="session")
def library_digests() -> dict[str, str]:
    """The digest of every target, as installed (a fresh interpreter: no patch of ours is in place)."""
    out = subprocess.run([sys.executable, "-m", "tests.reach"], cwd=ROOT, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


@pytest.mark.parametrize("reach", REACHES, ids=[f"{r.target} <- {r.ours}" for r in REACHES])
def test_the_library_code_we_reach_into_is_what_was_checked(reach: Reach, library_digests: dict[str, str]) -> None:
    found = library_digests[reach.target]
    assert found == reach.digest, (
        f"{reach.target} changed since {reach.checked} (our {reach.kind}: {reach.ours}; {reach.note}). "
        f"Re-read it against our code, then set the digest to {found!r} (docs/upgrading-rq.md)"
    )


@pytest.mark.parametrize("reach", REACHES, ids=[f"{r.target} <- {r.ours}" for r in REACHES])
def test_each_reach_names_code_of_ours_that_exists(reach: Reach) -> None:
    if "/" in reach.ours:
        assert (ROOT / reach.ours).is_file()
    else:
        assert resolve(reach.ours) is not None


def test_every_reach_has_a_known_kind_and_a_checked_release() -> None:
    kinds = {compat.OVERRIDE, compat.PRIVATE, compat.PATCH, compat.COPY, compat.KEY, compat.RELY}
    assert {r.kind for r in REACHES} <= kinds
    assert {r.checked for r in REACHES} == {f"{name} {version}" for name, version in compat.CHECKED.items()}


@pytest.mark.parametrize(("ours", "base"), SUBCLASSES, ids=[c.__name__ for c, _ in SUBCLASSES])
def test_every_library_method_we_override_is_listed(ours: type, base: type) -> None:
    # An unlisted name here is an override nobody re-checks on upgrade, or a
    # name of ours that a new release of the library now also defines.
    listed = {r.ours for r in REACHES}
    overridden = {
        name
        for name in vars(ours)
        if hasattr(base, name) and not name.startswith("__") and name not in EXTENSION_POINTS
    }
    unlisted = sorted(n for n in overridden if f"{ours.__module__}.{ours.__qualname__}.{n}" not in listed)
    assert unlisted == []


def assigned_attributes(cls: type) -> set[str]:
    """Every `self.<name> = ...` target in the methods of `cls`."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    names = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for target in targets:
            for leaf in ast.walk(target) if target is not None else ():
                if isinstance(leaf, ast.Attribute) and isinstance(leaf.value, ast.Name) and leaf.value.id == "self":
                    names.add(leaf.attr)
    return names


def test_every_attribute_of_rqs_worker_we_write_is_named(connection: Any) -> None:
    # ServiceWorker writes some of RQ's own worker attributes; each must be
    # named in the reach on BaseWorker.__init__, so an upgrade re-checks it.
    stock = Worker([], name="attributes", connection=connection, prepare_for_work=False)
    rqs = set(vars(stock)) | {n for n in dir(Worker) if not n.startswith("__")}
    written = assigned_attributes(ServiceWorker) & rqs
    note = next(r.note for r in REACHES if r.target == "rq.worker.base.BaseWorker.__init__")
    assert sorted(name for name in written if name not in note) == []


def test_rqs_functions_are_patched_with_ours_in_every_module_that_resolves_them() -> None:
    for module in (rq.job, rq.queue, rq.registry, rq.results):
        assert module.resolve_serializer is compat.resolve_serializer_once
    assert rq.job.str_to_date is compat.parse_rq_date


@pytest.mark.parametrize(
    "moment", [datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC), datetime(2030, 12, 31, tzinfo=UTC)]
)
def test_rq_dates_parse_as_rqs_own_parser_reads_them(moment: datetime) -> None:
    text = rq.utils.utcformat(moment)
    assert compat.parse_rq_date(text) == rq.utils.str_to_date(text) == moment
    assert compat.parse_rq_date(text.encode()) == moment


def test_the_installed_libraries_are_the_checked_releases() -> None:
    assert {name: metadata.version(name) for name in compat.CHECKED} == compat.CHECKED


def test_requirements_pin_exactly_the_checked_releases() -> None:
    pins = dict(line.split("==", 1) for line in (ROOT / "requirements.txt").read_text().splitlines() if "==" in line)
    assert {name: pins.get(name) for name in compat.CHECKED} == compat.CHECKED


def test_no_warning_when_the_checked_releases_are_installed() -> None:
    assert compat.version_warnings() == []
    assert compat.check_versions() is True


def test_an_unchecked_release_is_named_with_the_checked_one() -> None:
    warnings = compat.version_warnings({"rq": "3.1.0", "rq-scheduler": "0.14.0", "rq-dashboard": None})
    assert len(warnings) == 1
    assert "rq 3.1.0 is installed" in warnings[0] and "rq 3.0.0" in warnings[0]
    assert "docs/upgrading-rq.md" in warnings[0]


def fake_distribution(folder: Path, name: str, version: str) -> Path:
    """A dist-info that makes importlib.metadata report `version` for `name` (the package itself is untouched)."""
    info = folder / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return folder


@pytest.mark.slow
def test_a_worker_next_to_an_unchecked_release_warns_and_still_runs_jobs(
    processes: Processes, tmp_path: Path, connection: Any
) -> None:
    from tests.worker_fixtures import enqueue, status

    fake = fake_distribution(tmp_path / "site", "rq-dashboard", "0.8.0")
    worker = processes.worker("default", env={"PYTHONPATH": f"{fake}:{ROOT}", "TASK_MODULES": "service.tasks.diag"})
    job = enqueue(connection, "diag.echo", 1)
    wait_until(lambda: status(job) == "finished", timeout=30, what="the job to run")
    assert "rq-dashboard 0.8.0 is installed" in worker.output()
    assert "rq-dashboard 0.9.0 only" in worker.output()


def test_the_web_app_warns_at_start_about_an_unchecked_release(
    settings: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service import create_app

    monkeypatch.setattr(compat, "_installed", lambda name: "3.1.0" if name == "rq" else compat.CHECKED[name])
    create_app(settings)
    assert "rq 3.1.0 is installed" in capsys.readouterr().out
