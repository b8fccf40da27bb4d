"""The routes document: validation errors name the field."""

from __future__ import annotations

import pytest

from modelfleet.gateway.routes import RoutesError, parse_routes


def test_routes_are_validated_with_the_field_named() -> None:
    with pytest.raises(RoutesError, match=r"models\.m\.versions\.0\.endpoints"):
        parse_routes(
            {"models": {"m": {"versions": [{"version": "1", "endpoints": ["10.0.0.1:80"]}]}}}
        )
    with pytest.raises(RoutesError, match=r"models\.m\.max_concurrency"):
        parse_routes({"models": {"m": {"max_concurrency": 0, "versions": [{"version": "1"}]}}})
