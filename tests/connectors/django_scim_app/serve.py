"""Run the application: ``python -m tests.connectors.django_scim_app.serve PORT`` creates its
tables in ``SCIM_APP_DB`` and serves it on 127.0.0.1:PORT until stopped."""

from __future__ import annotations

import os
import sys
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server


class _Threading(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.connectors.django_scim_app.settings")
    import django
    from django.core.management import call_command
    from django.core.wsgi import get_wsgi_application

    django.setup()
    call_command("migrate", run_syncdb=True, verbosity=0)
    application = get_wsgi_application()
    server = make_server(
        "127.0.0.1", int(sys.argv[1]), application, server_class=_Threading, handler_class=_Quiet
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
