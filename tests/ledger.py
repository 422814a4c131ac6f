"""The "nothing lost" check of the fault tests: jobs record known values; every value must be there.

Each job runs `diag.record(key, value)`, which appends its value to the Redis
list diag:<key>. After the faults, every value must be present at least once;
values present more than once are re-executions (at-least-once), counted and
reported, never a failure.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from redis import Redis


@dataclass
class LedgerReport:
    expected: int
    missing: list[str]
    duplicates: int

    def __str__(self) -> str:
        return f"{self.expected} expected, {len(self.missing)} missing, {self.duplicates} executed more than once"


def ledger(connection: Redis, key: str, values: list[str]) -> LedgerReport:
    """Compare what diag.record wrote under `key` with the `values` that were acknowledged."""
    seen = Counter(v.decode() for v in connection.lrange(f"diag:{key}", 0, -1))
    missing = sorted(v for v in values if seen[v] == 0)
    duplicates = sum(n - 1 for v, n in seen.items() if n > 1)
    return LedgerReport(expected=len(values), missing=missing, duplicates=duplicates)


def assert_nothing_lost(connection: Redis, key: str, values: list[str]) -> LedgerReport:
    """Fail when an acknowledged value never ran; print the duplicates for the record."""
    report = ledger(connection, key, values)
    print(f"ledger {key}: {report}")
    assert not report.missing, f"lost {len(report.missing)} jobs, e.g. {report.missing[:5]}"
    return report
