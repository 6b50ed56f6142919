"""Prefect flows: the product's batch pipelines, built from the tasks in ``tasks/``.

localedit runs offline: unless the user says otherwise, the Prefect server that a flow starts
on its own (the ephemeral API) does not try to send usage telemetry.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
