"""Schemathesis against the bot's own /openapi.json: generated requests (valid and invalid bodies,
odd path and query values) to every declared route, with one open chain so the order routes reach
real validation and stock. No answer may be a 5xx. Slow: CI runs it."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.contract.test_chains import open_chain

pytestmark = pytest.mark.slow


def test_no_generated_request_gets_a_server_error(synced):
    token, _ = open_chain(synced)
    schema = schemathesis.openapi.from_url(f"{synced.bot.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any(op.path == "/c/{token}/orders" and op.method.upper() == "POST" for op in operations)
    tried: list[str] = []

    for op in operations:
        examples = 200 if op.path == "/c/{token}/orders" else 30   # the route members type into

        @given(case=op.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case):
            params = case.path_parameters or {}
            if "token" in params and case.operation.path.startswith("/c/") and len(str(case.body)) % 2:
                params["token"] = token   # half the time the real chain, so bodies reach validation and stock
            case.call_and_validate(checks=[not_a_server_error])
            tried.append(f"{case.method} {case.formatted_path}")

        run()
    assert len(tried) >= 15 * len(operations)
