"""Requests carrying the application's bearer token act as an authenticated client."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


class _Client:
    is_authenticated = True
    is_active = True


class BearerToken:
    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.token = os.environ.get("SCIM_APP_TOKEN", "")

    def __call__(self, request: Any) -> Any:
        if self.token and request.headers.get("Authorization") == f"Bearer {self.token}":
            request.user = _Client()
        return self.get_response(request)
