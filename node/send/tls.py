"""TLS for an outgoing association: an ``ssl.SSLContext`` from a destination's settings.

TLS 1.2 is the minimum. The peer's certificate is verified against ``ca_file`` (or the
system store when none is given) unless ``verify_peer = false``; host name checking is
off by default because PACS certificates are usually issued to an AE, not a DNS name
(turn it on with ``check_hostname = true``). A client certificate is presented when
``cert_file`` (and ``key_file``, unless the key is in the same PEM) is set.
"""

from __future__ import annotations

import logging
import ssl

from node.config import TLSSettings
from node.errors import ConfigError

log = logging.getLogger(__name__)


def client_context(settings: TLSSettings, where: str = "tls") -> ssl.SSLContext:
    """Build the client-side SSLContext; ConfigError naming the key when a file is unusable."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.verify_peer:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = settings.check_hostname
        try:
            if settings.ca_file is not None:
                ctx.load_verify_locations(cafile=str(settings.ca_file))
            else:
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{where}.ca_file: cannot load CA certificates from {settings.ca_file}: {exc}"
            ) from None
    else:
        log.warning("%s.verify_peer is false: the PACS certificate is NOT verified", where)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if settings.cert_file is not None:
        try:
            ctx.load_cert_chain(
                str(settings.cert_file),
                str(settings.key_file) if settings.key_file is not None else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{where}.cert_file/key_file: cannot load the client certificate "
                f"{settings.cert_file}: {exc}"
            ) from None
    return ctx
