"""What gevent patches in this process, and when: the one start-up order for every entry point.

The hub needs cooperative sockets, ssl, DNS, select, time and signals before ``requests`` or
anything else opens a socket. Threads it must not get: native inference and the books run in real
OS threads, and a lock that ``monkey.patch_all()`` had turned into a gevent lock deadlocks the
moment two of those threads meet on it — libsndfile's error lock in ``soundfile``, the handler
locks of ``logging``, the import locks of ``importlib``, any ``threading.Lock()`` a library makes
later. So ``threading``, ``_thread`` and ``queue`` stay native: every lock anyone creates is an OS
lock, whichever thread takes it. Greenlets wait with gevent's own primitives (``gevent.lock``,
``gevent.event``, ``gevent.queue``), which is what this code base uses on the hub.

``python hoosh_edge.py``, ``hoosh-edge serve`` and ``python -m hoosh_edge serve`` all call
``patch_gevent()`` before anything else is imported. It also gives ``http.client`` the header
parser of ``headers.py`` (the same result, without the email package for plain blocks).
"""

from __future__ import annotations

import os

# What patch_all() must leave alone: OS threads stay OS threads, their locks OS locks.
UNPATCHED = {"thread": False, "queue": False}
# gevent's thread resolver, minus the thread hop for IP literals (see resolver.py).
RESOLVER = "hoosh_edge.serve.resolver.NumericFirstResolver"


def patch_gevent() -> None:
    """Patch sockets, ssl, DNS, select, time, os, subprocess and signals; never threading."""
    import gevent
    from gevent import monkey

    if "GEVENT_RESOLVER" not in os.environ:  # an operator's choice of resolver wins
        gevent.config.resolver = RESOLVER
    if not monkey.is_module_patched("socket"):
        monkey.patch_all(**UNPATCHED)
    from hoosh_edge.serve import headers

    headers.install()


def threading_warning() -> str | None:
    """Why this process may deadlock, if something patched threading before we could say no."""
    from gevent import monkey

    if monkey.is_module_patched("threading"):
        return ("threading was monkey-patched by gevent before hoosh-edge started: locks taken in "
                "inference threads are gevent locks and can deadlock; start the gateway with "
                "'python hoosh_edge.py' or 'hoosh-edge serve'")  # fmt: skip
    return None
