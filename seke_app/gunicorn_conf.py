"""gunicorn's settings for SEKE's web process, read from the environment.

Start the production server with (README, "Production")::

    gunicorn -c python:seke_app.gunicorn_conf seke_app.wsgi

Each worker is a process with its own threads (gunicorn's ``gthread`` worker):
a request holds one thread, not a whole process, so a large upload streaming in
or a reviewer's page waiting on the database does not stop the other requests
of that worker. gunicorn reads the module-level names below; this module only
computes them and imports nothing of Django, so a malformed variable stops the
server before any worker starts, with a message naming it.
"""

from __future__ import annotations

import gc
import os

from seke_app.config import env_int, env_list

# Where to listen: HOST:PORT, unix:PATH or fd://N, several separated by commas.
# The default answers only this machine, e.g. a proxy (nginx, Caddy) in front.
bind = env_list("SEKE_BIND", ["127.0.0.1:8000"])


def default_workers(cores: int) -> int:
    """gunicorn's rule of thumb, two workers per core plus one, capped at 8.

    Every worker loads the whole application (some 200 MB with numpy, scipy and
    the model client), so a large machine gets more threads per worker rather
    than ever more processes.
    """
    return min(2 * cores + 1, 8)


def available_cores() -> int:
    """The cores this process may run on: a container's share, not the host's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # macOS has no affinity call.


workers = env_int("SEKE_WEB_WORKERS", default_workers(available_cores()), minimum=1)
worker_class = "gthread"
threads = env_int("SEKE_WEB_THREADS", 4, minimum=1)

# With threads, this is not a limit on a request's duration: a worker whose main
# loop has not reported to the arbiter for this long (it hangs, or holds the GIL
# in a runaway computation) is killed and replaced. A long upload streams in a
# thread while the worker keeps reporting, so MAX_UPLOAD_BYTES needs no longer
# timeout here; a client that stalls mid-upload is the proxy's to cut off
# (nginx's client_body_timeout).
timeout = env_int("SEKE_WEB_TIMEOUT", 120, minimum=10)
# On a restart (a deployment's SIGHUP or SIGTERM, or max_requests below), how long
# a worker may finish the requests it is serving, an upload still arriving say,
# before it is killed. 2 GiB (SEKE_MAX_UPLOAD_MB's default) at 20 MB/s takes 100 s.
graceful_timeout = env_int("SEKE_WEB_GRACEFUL_TIMEOUT", 120, minimum=1)
# Longer than gunicorn's 2 s: proxies and load balancers keep connections to the
# server open between requests, and one the server closes first can fail a request.
keepalive = 5

# Each worker is replaced, gracefully, after about this many requests, which
# bounds the memory a slow leak can take; the jitter keeps workers from all
# restarting at once. 0 never replaces them.
max_requests = env_int("SEKE_WEB_MAX_REQUESTS", 1000, minimum=0)
max_requests_jitter = max_requests // 10

# Behind a proxy, Django decides whether a request came over https from the
# proxy's X-Forwarded-Proto (SEKE_BEHIND_TLS_PROXY), whatever gunicorn trusts.
# gunicorn itself trusts that header only from FORWARDED_ALLOW_IPS (its own
# variable, default 127.0.0.1,::1); set it to a proxy on another machine only if
# something else reads gunicorn's idea of the scheme.

# Access and error lines go to stderr, as Django's own log lines do (README,
# "Logs"), in the same format: time, level, logger, message. The root logger gets
# no handler, since Django's loggers have their own and would print twice.
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s bytes %(M)s ms "%(a)s"'
logconfig_dict = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"timed": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "timed",
            "stream": "ext://sys.stderr",
        }
    },
    "root": {"level": "WARNING", "handlers": []},
    "loggers": {
        "gunicorn.error": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
        "gunicorn.access": {"level": "INFO", "handlers": ["stderr"], "propagate": False},
    },
}


def post_worker_init(worker: object) -> None:
    """Once a worker has loaded the application, freeze what it holds.

    Django, numpy, scipy and the model client leave hundreds of thousands of objects
    that live as long as the process. Frozen, they are no longer scanned by the
    garbage collector's full collections, which otherwise pause a request that
    allocates much (a page of annotations and their JSON) for 100-200 ms now and
    then (bench/api_listing.py, ``--no-gc-freeze``).
    """
    gc.collect()
    gc.freeze()
