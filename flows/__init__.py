"""Prefect flows: the product's batch pipelines, built from the tasks in ``tasks/``.

localedit runs offline: unless the user says otherwise, neither the Prefect server that a flow starts
on its own nor Prefect's client tries to send usage telemetry (the client's first-run notice about it
also appeared above a new user's progress bar).
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")  # Prefect's client-side switch (prefect._internal.analytics)
