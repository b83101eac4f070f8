"""SEKE's REST API under ``/api/``: tokens, authentication, errors and the routers.

Each stage of the data flow keeps its own endpoints beside its views (``api.py`` in
``seke_app/datasets``, ``seke_app/runs``, ...); this package holds what they share:
the token model's services (``tokens``), the NinjaAPI instance with its
authentication and JSON errors (``core``), and the page where a user manages their
tokens (``views``).
"""
