"""Property-based fuzzing of every documented endpoint from /openapi.json (schemathesis, bounded).

No generated request may get a 500, and every response must match the document. The one check left
out is "schema-valid data is accepted": a schema cannot know which task names are registered or
which job ids exist, so a well-formed body naming an unknown task rightly gets a 422.
"""

from __future__ import annotations

import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.conftest import AUTH

MAX_EXAMPLES = 15


def test_no_500_and_responses_match_the_document(app: Flask) -> None:
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, headers=AUTH)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    for operation in operations:

        @given(operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def call(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])

        call()
