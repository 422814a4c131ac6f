"""Query strings: parsed with a schema model (numbers are ASCII digits only) and page sizes capped by MAX_PAGE_SIZE."""

from __future__ import annotations

from flask import request

from service.api.context import settings
from service.core.errors import InvalidField
from service.jobs.schemas import Model, validate


def query(model: type[Model]) -> Model:
    """Return the request's query string validated as `model`; InvalidField (422) names a bad parameter.

    A `limit` above MAX_PAGE_SIZE is a 422 when the client asked for it; a default above it is lowered.
    """
    repeated = next((name for name, values in request.args.lists() if len(values) > 1), None)
    if repeated is not None:  # `?status=queued&status=failed` would silently mean one of them
        raise InvalidField(repeated[:50], "give this parameter once")
    parsed = validate(model, request.args.to_dict())
    limit = getattr(parsed, "limit", None)
    cap = settings().limits.page_size
    if limit is None or limit <= cap:
        return parsed
    if "limit" in parsed.model_fields_set:
        raise InvalidField("limit", f"must be at most {cap} (MAX_PAGE_SIZE)")
    return parsed.model_copy(update={"limit": cap})
