"""Django settings for the test application (database path and token from the environment)."""

from __future__ import annotations

import os

SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_scim",
    "tests.connectors.django_scim_app",
]
AUTH_USER_MODEL = "django_scim_app.User"
MIDDLEWARE = [
    "tests.connectors.django_scim_app.auth.BearerToken",
    "django_scim.middleware.SCIMAuthCheckMiddleware",
]
ROOT_URLCONF = "tests.connectors.django_scim_app.urls"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SCIM_APP_DB", ":memory:"),
        # requests in parallel wait for SQLite's write lock rather than fail
        "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
    }
}
SCIM_SERVICE_PROVIDER = {
    "NETLOC": "127.0.0.1",
    "SCHEME": "http",
    "GROUP_MODEL": "tests.connectors.django_scim_app.models.Group",
    "AUTHENTICATION_SCHEMES": [
        {"type": "oauthbearertoken", "name": "Bearer", "description": "bearer token"}
    ],
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
