"""The task registry: the allow-list of names, with per-task defaults."""

from __future__ import annotations

import pytest

from service.core.errors import ConfigError, UnknownTask
from service.tasks.registry import REGISTRY, TaskRegistry, TaskSpec, load_task_modules


def noop() -> None:
    """Do nothing."""


def other() -> None:
    """Do nothing else."""


def test_registered_task_is_found_with_its_defaults() -> None:
    registry = TaskRegistry()
    registry.add(TaskSpec("reports.generate", noop, queue="low", timeout_seconds=60))
    spec = registry.get("reports.generate")
    assert (spec.func, spec.queue, spec.timeout_seconds) == (noop, "low", 60)


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "__import__", "diag.echo ", "", None, 7])
def test_unregistered_names_are_unknown(name: object) -> None:
    load_task_modules(["service.tasks.diag"])
    with pytest.raises(UnknownTask):
        REGISTRY.get(name)


@pytest.mark.parametrize("name", ["Reports.Generate", "nodot", "a..b", "a.b-c", "a.b "])
def test_bad_names_are_refused_at_registration(name: str) -> None:
    with pytest.raises(ValueError, match="task name"):
        TaskRegistry().add(TaskSpec(name, noop))


def test_a_second_function_under_one_name_is_refused() -> None:
    registry = TaskRegistry()
    registry.add(TaskSpec("a.b", noop))
    with pytest.raises(ValueError, match="already registered"):
        registry.add(TaskSpec("a.b", other))


def test_unknown_lane_is_refused_at_registration() -> None:
    with pytest.raises(ValueError, match="queue"):
        TaskRegistry().add(TaskSpec("a.b", noop, queue="urgent"))


def test_diagnostic_tasks_are_registered() -> None:
    load_task_modules(["service.tasks.diag"])
    assert {"diag.echo", "diag.sleep", "diag.fail", "diag.record"} <= {s.name for s in REGISTRY.all()}


def test_a_module_that_cannot_be_imported_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="TASK_MODULES"):
        load_task_modules(["service.no_such_module"])
