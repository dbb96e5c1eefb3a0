from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

from mlops_console.tracing import setup_tracing

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mlops_console.settings")
# Before the application loads its middleware: the Django instrumentation adds its own.
setup_tracing()
application = get_wsgi_application()
