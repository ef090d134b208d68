"""URL safety: what a crawler that runs inside a company network may fetch, and a fetch that keeps to it.

A url from the web is untrusted. Fetching it from inside a network can reach places the web must
not see (server-side request forgery): the machine itself (``127.0.0.1``), the office network
(``10.0.0.0/8``), the cloud metadata service (``169.254.169.254``) that hands out credentials. So,
unless ``allow_private`` is set:

1. the scheme must be ``http`` or ``https``;
2. the host is resolved (static ``hosts`` table first, then DNS) and **every** address it resolves
   to must be global: loopback, private (RFC 1918, ULA ``fc00::/7``), link-local (``169.254/16``,
   ``fe80::/10``), multicast, unspecified and reserved/non-global ranges are refused, also when
   they hide inside IPv6 (``::ffff:10.0.0.1``, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``);
3. the connection goes to an address that was just checked ("pinning"), so a DNS answer that
   changes between check and connect (DNS rebinding) cannot slip through;
4. every redirect hop is checked the same way before it is followed.

``allow_hosts`` exempts named hosts from step 2 (an internal CDN, or the tests' loopback server);
a redirect from such a host to another host is checked as usual.

:func:`fetch` is the GET that keeps to the policy and to the hostile-content limits: a deadline for
the whole fetch (a server that trickles bytes forever), a cap on the body (by Content-Length and
while reading), and one short reason per failure.
"""

from __future__ import annotations

import dataclasses
import heapq
import http.client
import ipaddress
import json
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

SCHEMES = ("http", "https")
_PRIVATE_NETS = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")]
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class Refused(Exception):
    """The policy forbids this url (no request was sent)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class FetchError(Exception):
    """The fetch failed; ``reason`` is short and stable enough to count by (e.g. ``HTTP 404``)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# -- addresses ------------------------------------------------------------------------------------

def address_problem(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why an address may not be fetched from (``"loopback address"``, ...), or None when global."""
    addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
    if isinstance(addr, ipaddress.IPv6Address):
        # An IPv4 address can hide inside an IPv6 one: judge the IPv4 address.
        inner = addr.ipv4_mapped or addr.sixtofour
        if inner is None and addr in _NAT64:
            inner = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if inner is None and addr.teredo:
            inner = addr.teredo[1]
        if inner is not None:
            return address_problem(inner)
    if addr.is_unspecified:
        return "unspecified address"
    if addr.is_loopback:
        return "loopback address"
    if addr.is_link_local:
        return "link-local address"
    if addr.is_multicast:
        return "multicast address"
    if any(addr in net for net in _PRIVATE_NETS):
        return "private address"
    if addr.is_reserved or not addr.is_global:
        return "reserved address"
    return None


@dataclasses.dataclass(frozen=True)
class Policy:
    """Which urls may be fetched. ``hosts`` is a static name → addresses table used before DNS."""

    allow_private: bool = False
    allow_hosts: frozenset = frozenset()
    hosts: tuple = ()  # ((name, (ip, ...)), ...) — hashable; build with Policy.make

    @classmethod
    def make(cls, allow_private: bool = False, allow_hosts=(), hosts: dict | None = None) -> "Policy":
        table = []
        for name, ips in (hosts or {}).items():
            ips = [ips] if isinstance(ips, str) else list(ips)
            for ip in ips:
                ipaddress.ip_address(ip)  # a bad table entry is an error now, not at fetch time
            table.append((str(name).lower().rstrip("."), tuple(ips)))
        return cls(bool(allow_private), frozenset(_allow_entry(h) for h in allow_hosts), tuple(sorted(table)))

    def exempt(self, host: str, port: int | None = None) -> bool:
        """Whether ``allow_hosts`` exempts this host (any port: a bare ``host``) or this ``host:port``."""
        host = host.lower().rstrip(".")
        return host in self.allow_hosts or (port is not None and _host_port(host, port) in self.allow_hosts)

    def pin_ports(self, urls) -> "Policy":
        """A bare ``host`` in ``allow_hosts`` becomes ``host:port`` for each port the input's urls use
        with that host, so that a redirect from the allowed server to another port of the same host
        (another service) is refused like any private address. ``host:port`` entries stay."""
        bare = {h for h in self.allow_hosts if _port_of(h) is None}
        if not bare:
            return self
        used = set()
        for url in urls:
            try:
                host, port = split_url(url)
            except (Refused, FetchError):
                continue
            host = host.lower().rstrip(".")
            if host in bare:
                used.add(_host_port(host, port))
        return dataclasses.replace(self, allow_hosts=frozenset((self.allow_hosts - bare) | used))

    def to_json(self) -> str:
        return json.dumps({"allow_private": self.allow_private, "allow_hosts": sorted(self.allow_hosts),
                           "hosts": {k: list(v) for k, v in self.hosts}})

    @classmethod
    def from_json(cls, text: str) -> "Policy":
        d = json.loads(text)
        return cls.make(d["allow_private"], d["allow_hosts"], d["hosts"])

    # -- resolving and checking ------------------------------------------------------------------
    def resolve(self, host: str) -> list[str]:
        """Addresses of a host: an IP literal, the static table, or DNS (raises FetchError)."""
        host = host.lower().rstrip(".")
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        for name, ips in self.hosts:
            if name == host:
                return list(ips)
        try:
            infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError, OSError):
            raise FetchError("DNS lookup failed") from None
        out = []
        for info in infos:
            ip = info[4][0].split("%")[0]
            if ip not in out:
                out.append(ip)
        if not out:
            raise FetchError("DNS lookup failed")
        return out

    def addresses(self, host: str, port: int | None = None) -> list[str]:
        """The addresses to connect to; raises Refused when any of them is not allowed."""
        ips = self.resolve(host)
        if self.allow_private or self.exempt(host, port):
            return ips
        for ip in ips:  # all of them: a name that resolves to one public and one private address is refused
            problem = address_problem(ip)
            if problem:
                raise Refused(problem)
        return ips

    def check_url(self, url: str) -> tuple[str, int]:
        """Check scheme and host of a url; returns (host, port). Raises Refused or FetchError."""
        host, port = split_url(url)
        self.addresses(host, port)
        return host, port


def _port_of(entry: str) -> int | None:
    """The port of an ``allow_hosts`` entry (``host:port``, ``[v6]:port``), None for a bare host."""
    if entry.startswith("["):
        host, _, port = entry.rpartition("]:")
        return int(port) if host and port.isdigit() else None
    host, sep, port = entry.rpartition(":")
    return int(port) if sep and port.isdigit() and ":" not in host else None


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{int(port)}" if ":" in host else f"{host}:{int(port)}"


def _allow_entry(entry: str) -> str:
    """``host`` or ``host:port`` (``[v6]:port``), lower case, no trailing dot on the host."""
    entry = str(entry).strip().lower()
    port = _port_of(entry)
    if port is None:
        return entry.strip("[]").rstrip(".")
    return _host_port(entry[: entry.rfind(":")].strip("[]").rstrip("."), port)


def split_url(url: str) -> tuple[str, int]:
    """(host, port) of an http(s) url; Refused for another scheme, FetchError when malformed."""
    if not isinstance(url, str) or not url.strip():
        raise FetchError("invalid url")
    try:
        parts = urllib.parse.urlsplit(url.strip())
        scheme = parts.scheme.lower()
        if scheme and scheme not in SCHEMES:
            raise Refused(f"scheme {scheme!r}")
        host = parts.hostname
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise FetchError("invalid url") from None
    if not scheme or not host:
        raise FetchError("invalid url")
    return host, port


# -- the deadline: one reaper thread per process shuts down sockets that outlive their fetch ---------

class _Reaper:
    """Shut down sockets past their deadline, whatever they are blocked on (headers, TLS, body)."""

    def __init__(self):
        self._heap: list = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._n = 0

    def watch(self, sock: socket.socket, deadline: float) -> None:
        with self._lock:
            self._n += 1
            heapq.heappush(self._heap, (deadline, self._n, sock))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="clipcurate-fetch-reaper", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            with self._lock:
                while self._heap and (self._heap[0][0] <= now or self._heap[0][2].fileno() < 0):
                    _, _, sock = heapq.heappop(self._heap)
                    if sock.fileno() >= 0:
                        try:
                            sock.shutdown(socket.SHUT_RDWR)
                        except OSError:
                            pass
                delay = (self._heap[0][0] - now) if self._heap else 1.0
            self._wake.wait(min(max(delay, 0.01), 1.0))
            self._wake.clear()


_REAPER = _Reaper()
_LOCAL = threading.local()  # the current fetch's deadline, read by the pinned connections


# -- pinned connections and a checking redirect handler ------------------------------------------

def _pinned_create_connection(policy: Policy):
    def create(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **_):
        host, port = address
        last: OSError | None = None
        for ip in policy.addresses(host, port):  # checked addresses only: no second DNS answer
            family = socket.AF_INET6 if ":" in ip else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                deadline = getattr(_LOCAL, "deadline", None)
                if deadline is not None:
                    _REAPER.watch(sock, deadline)
                sock.connect((ip, port))
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        raise last or OSError("no address to connect to")

    return create


def _connection_classes(policy: Policy):
    create = _pinned_create_connection(policy)

    class PinnedHTTPConnection(http.client.HTTPConnection):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self._create_connection = create

    class PinnedHTTPSConnection(http.client.HTTPSConnection):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self._create_connection = create  # TLS still verifies the certificate of the url's host name

    return PinnedHTTPConnection, PinnedHTTPSConnection


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, policy: Policy):
        self.policy = policy

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        try:
            self.policy.check_url(newurl)
        except Refused as exc:
            raise Refused(f"redirect to {exc.reason}") from None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def build_opener(policy: Policy) -> urllib.request.OpenerDirector:
    """An opener that only speaks http(s), connects to checked addresses and checks each redirect.

    Environment proxies are ignored: a proxy would make the checked address the proxy's.
    """
    http_cls, https_cls = _connection_classes(policy)

    class PinnedHTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(http_cls, req)

    class PinnedHTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(https_cls, req, context=self._context)

    opener = urllib.request.OpenerDirector()
    for handler in (urllib.request.ProxyHandler({}), urllib.request.UnknownHandler(), PinnedHTTPHandler(),
                    PinnedHTTPSHandler(), urllib.request.HTTPDefaultErrorHandler(), _CheckedRedirects(policy),
                    urllib.request.HTTPErrorProcessor()):
        opener.add_handler(handler)
    return opener


_OPENERS: dict = {}


def _opener(policy: Policy):
    op = _OPENERS.get(policy)
    if op is None:
        op = _OPENERS[policy] = build_opener(policy)
    return op


# -- the fetch --------------------------------------------------------------------------------------

USER_AGENT = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:72.0) Gecko/20100101 Firefox/72.0"


def fetch(url: str, policy: Policy, *, timeout: float = 10.0, deadline: float = 30.0,
          max_bytes: int = 32 * 1024 * 1024, user_agent: str = USER_AGENT):
    """GET a url under the policy; returns (body bytes, response headers).

    Raises :class:`Refused` (nothing was sent to that address) or :class:`FetchError` with a short
    reason: ``HTTP 404``, ``timeout``, ``too slow (fetch deadline)``, ``body too large
    (Content-Length)``, ``body too large (stream)``, ``truncated body``, ``connection refused``...
    """
    start = time.monotonic()
    end = start + deadline
    policy.check_url(url)  # scheme + every address of the host, before anything is sent
    req = urllib.request.Request(url.strip(), headers={"User-Agent": user_agent})
    _LOCAL.deadline = end
    try:
        with _opener(policy).open(req, timeout=timeout) as r:
            length = r.headers.get("Content-Length")
            if length and length.strip().isdigit() and int(length) > max_bytes:
                raise FetchError("body too large (Content-Length)")
            buf = bytearray()
            while True:
                if time.monotonic() > end:
                    raise FetchError("too slow (fetch deadline)")
                chunk = r.read1(1 << 16)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > max_bytes:
                    raise FetchError("body too large (stream)")
            if time.monotonic() > end:
                raise FetchError("too slow (fetch deadline)")
            if r.length:  # the server promised more bytes than it sent
                raise FetchError("truncated body")
            return bytes(buf), r.headers
    except (Refused, FetchError):
        raise
    except urllib.error.HTTPError as exc:
        raise FetchError(f"HTTP {exc.code}") from None
    except Exception as exc:  # noqa: BLE001 - every other failure becomes one counted reason
        if time.monotonic() > end:
            raise FetchError("too slow (fetch deadline)") from None
        raise FetchError(_reason(exc)) from None
    finally:
        _LOCAL.deadline = None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        if isinstance(exc.reason, Refused):
            raise exc.reason
        return _reason(exc.reason)
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected)):
        return "connection reset"
    if isinstance(exc, http.client.IncompleteRead):
        return "truncated body"
    if isinstance(exc, socket.gaierror):
        return "DNS lookup failed"
    if isinstance(exc, http.client.HTTPException):
        return f"bad HTTP response ({exc.__class__.__name__})"
    if isinstance(exc, ssl.SSLError):
        return "TLS error"
    if isinstance(exc, urllib.error.URLError):
        return f"url error ({str(exc.reason)[:60]})"
    return f"{exc.__class__.__name__}: {str(exc)[:80]}"
