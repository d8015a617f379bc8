"""Join the class: the link a student types or scans to open the page the teacher shows.

In presentation mode the Lecture shows its current step's link as a QR code with the address written out.
The address must be one the students' devices can reach: the one the teacher's browser used when that
is a network address, else this machine's network address when the server listens on the network. A
server that answers this machine only (the default) cannot be joined, and the page says how to open it.
"""
from __future__ import annotations

import io
import ipaddress
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

import segno
from streamlit import config, net_util

LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}
OPEN_COMMAND = "bash scripts/app.sh --server.address 0.0.0.0"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (localhost, 127.x.x.x, ::1)."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class JoinLink:
    """A page's link for the class: ``url`` (None when the server cannot be reached from other
    machines) and a sentence for the page when it cannot."""

    url: str | None
    note: str = ""


def _listening_on_network(address: str | None) -> bool:
    return bool(address) and not is_loopback(address)


def join_link(browser_url: str | None, page: str, query: dict[str, str],
              server_address: str | None = None, network_ip: str | None = None) -> JoinLink:
    """The link to ``page`` with ``query`` that other machines can open.

    ``browser_url``: the address the teacher's browser used (``st.context.url``); ``server_address``:
    the address the server listens on (``server.address``; empty: every interface); ``network_ip``:
    this machine's address on its network. Both of the last two are read from Streamlit when None."""
    if server_address is None:
        server_address = config.get_option("server.address") or ""
    parts = urlsplit(browser_url or "")
    scheme = parts.scheme or "http"
    port = parts.port or config.get_option("server.port")
    host = parts.hostname or ""
    if host and not is_loopback(host):
        netloc = parts.netloc.rsplit("@", 1)[-1]
    elif server_address == "" or _listening_on_network(server_address):
        ip = network_ip if network_ip is not None else net_util.get_internal_ip()
        if not ip:
            return JoinLink(None, "This machine has no network address: students cannot reach it.")
        chosen = ip if server_address in ("", "0.0.0.0", "::") else server_address
        netloc = f"[{chosen}]:{port}" if ":" in chosen else f"{chosen}:{port}"
    else:
        return JoinLink(None, f"This server answers this machine only. To let a class join, start it with "
                              f"`{OPEN_COMMAND}` (see the README, \"Teach a class\").")
    path = "/" + page.strip("/")
    return JoinLink(urlunsplit((scheme, netloc, path, urlencode(query), "")))


def qr_png(url: str, scale: int = 8) -> bytes:
    """A QR code of ``url`` as PNG bytes (error correction M: still read from the back of a room)."""
    buf = io.BytesIO()
    segno.make(url, error="m", micro=False).save(buf, kind="png", scale=scale, border=2)
    return buf.getvalue()
