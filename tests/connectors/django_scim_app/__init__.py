"""A SCIM 2.0 application built on ``django-scim2`` (a server implementation other than
``scim2-server``), for end-to-end tests: its own user and group models, bearer-token access,
and a small launcher (``serve``) that runs it in a child process on a free port."""
