"""Connections to libvirt, with a configurable URI.

The URI decides where guests run: ``qemu:///system`` (the default, a local root libvirtd) or
``qemu+ssh://user@host/system`` to scale out onto another machine (paths in the spec must then exist
on that host; see docs/guest-layer.md). Precedence: explicit argument, ``FBSD_HIL_LIBVIRT_URI``,
``LIBVIRT_DEFAULT_URI``, then ``qemu:///system``.
"""

from __future__ import annotations

import os
import threading
from urllib.parse import urlparse

DEFAULT_URI = "qemu:///system"

_handler_installed = False
_lock = threading.Lock()


class LibvirtUnavailable(RuntimeError):
    """libvirt (binding or daemon) cannot be used; the message says how to fix it."""


def default_uri() -> str:
    return os.environ.get("FBSD_HIL_LIBVIRT_URI") or os.environ.get("LIBVIRT_DEFAULT_URI") or DEFAULT_URI


def is_local(uri: str) -> bool:
    """True when guests on `uri` run on this host (so host paths, ptys and logs are ours to open)."""
    parsed = urlparse(uri)
    return "+" not in parsed.scheme and parsed.hostname in (None, "", "localhost")


def import_libvirt():
    """The libvirt module, with libvirt's default "print every error to stderr" handler silenced."""
    global _handler_installed
    try:
        import libvirt
    except ImportError as exc:
        raise LibvirtUnavailable(
            "the libvirt Python binding is not installed in this environment: run `fbsd-hil doctor --fix`"
        ) from exc
    with _lock:
        if not _handler_installed:
            libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
            _handler_installed = True
    return libvirt


def connect(uri: str | None = None):
    """Open a read-write connection; errors name the URI and the fix."""
    libvirt = import_libvirt()
    uri = uri or default_uri()
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError as exc:
        hint = " (is libvirtd running? `fbsd-hil doctor --fix` starts it)" if is_local(uri) else ""
        raise LibvirtUnavailable(f"cannot connect to libvirt at {uri}: {exc}{hint}") from exc
    if conn is None:  # pragma: no cover - old bindings returned None
        raise LibvirtUnavailable(f"cannot connect to libvirt at {uri}")
    return conn
