"""URL safety and the hostile-content limits, without img2dataset (fast): urlsafety.fetch against
the loopback test server, the address classes, and the image header check."""

from __future__ import annotations

import io
import time

import pytest

from _download_server import ImageServer, bomb_png
from clipcurate.download import urlsafety as us
from clipcurate.download import inspect_image
from clipcurate.core.synth import jpeg_bytes, make_image, png_bytes

PUBLIC = "cdn.public-example.com"


@pytest.mark.parametrize("ip, problem", [
    ("127.0.0.1", "loopback address"), ("127.8.9.10", "loopback address"), ("::1", "loopback address"),
    ("10.0.0.1", "private address"), ("172.16.5.4", "private address"), ("192.168.1.1", "private address"),
    ("fc00::1", "private address"), ("fd12:3456::1", "private address"),
    ("169.254.169.254", "link-local address"), ("fe80::1", "link-local address"),
    ("224.0.0.1", "multicast address"), ("ff02::1", "multicast address"),
    ("0.0.0.0", "unspecified address"), ("::", "unspecified address"),
    ("240.0.0.1", "reserved address"), ("100.64.0.1", "reserved address"), ("192.0.2.10", "reserved address"),
    ("::ffff:127.0.0.1", "loopback address"), ("::ffff:10.1.2.3", "private address"),
    ("64:ff9b::a9fe:a9fe", "link-local address"), ("2002:0a00:0001::1", "private address"),
    ("8.8.8.8", None), ("93.184.216.34", None), ("2001:4860:4860::8888", None),
])
def test_address_classes(ip, problem):
    assert us.address_problem(ip) == problem


@pytest.mark.parametrize("url, reason", [
    ("ftp://example.com/a.jpg", "scheme 'ftp'"), ("file:///etc/passwd", "scheme 'file'"),
    ("gopher://example.com/", "scheme 'gopher'"), ("data:image/png;base64,AAAA", "scheme 'data'"),
    ("http://127.0.0.1/a.jpg", "loopback address"), ("http://[::1]:8080/a.jpg", "loopback address"),
    ("http://10.0.0.1/a.jpg", "private address"), ("http://169.254.169.254/latest/meta-data/", "link-local address"),
    ("http://intranet.corp/a.jpg", "private address"),  # via the static hosts table
])
def test_policy_refuses(url, reason):
    policy = us.Policy.make(hosts={"intranet.corp": ["93.184.216.34", "10.1.1.1"]})  # one bad address is enough
    with pytest.raises(us.Refused) as exc:
        policy.check_url(url)
    assert exc.value.reason == reason
    assert us.Policy.make(allow_private=True, hosts={"intranet.corp": "10.1.1.1"}).check_url(
        "http://intranet.corp/x")[0] == "intranet.corp"


def test_policy_malformed_and_numeric_hosts():
    policy = us.Policy.make()
    for bad in ("", None, "http://", "not a url", "http://[::1/x"):
        with pytest.raises(us.FetchError):
            policy.check_url(bad)
    try:  # glibc reads 2130706433 as 127.0.0.1: the resolved address is what is judged
        with pytest.raises(us.Refused):
            policy.check_url("http://2130706433/a.jpg")
    except us.FetchError:
        pytest.skip("resolver does not accept numeric host names")


@pytest.fixture(scope="module")
def srv():
    with ImageServer(slow_seconds=3, trickle_seconds=10) as s:
        yield s


def public(srv, path):
    return f"http://{PUBLIC}:{srv.port}{path}"


# A "public" name that the tests' static hosts table points at the loopback server; it is exempt
# from the address check (allow_hosts), every other host is checked, redirect hops included.
POLICY = us.Policy.make(allow_hosts=[PUBLIC], hosts={PUBLIC: "127.0.0.1"})


def test_redirect_to_private_is_refused_before_any_request(srv):
    before = srv.hits["/redirect-target.jpg"]
    with pytest.raises(us.Refused) as exc:
        us.fetch(public(srv, "/redirect-private"), POLICY, timeout=2, deadline=3)
    assert exc.value.reason == "redirect to loopback address"
    assert srv.hits["/redirect-target.jpg"] == before  # the target never saw a request
    # and the same redirect is followed when private addresses are allowed
    data, _ = us.fetch(public(srv, "/redirect-private"), us.Policy.make(allow_private=True,
                       hosts={PUBLIC: "127.0.0.1"}), timeout=2, deadline=3)
    assert data == srv.image(3, "jpg")


def test_direct_private_urls_send_nothing(srv):
    before = srv.total
    for url in (srv.url("/img/1.jpg"), f"http://localhost:{srv.port}/img/1.jpg", "http://10.0.0.1/a.jpg",
                "http://169.254.169.254/latest/meta-data/iam/"):
        with pytest.raises(us.Refused):
            us.fetch(url, us.Policy.make(), timeout=1, deadline=2)
    assert srv.total == before


def test_connection_is_pinned_to_the_checked_address(srv, monkeypatch):
    """DNS rebinding: the name is checked once and the socket goes to that address, not to a
    second (different) DNS answer."""
    import socket

    calls = []
    real = socket.getaddrinfo

    def rebinding(host, *a, **kw):
        calls.append(host)
        if host == "rebind.example":
            ip = "93.184.216.34" if len(calls) == 1 else "127.0.0.1"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, 0))]
        return real(host, *a, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    policy = us.Policy.make()
    # Every resolution is checked: the public first answer passes the pre-check, the loopback
    # second answer (the one the connection would use) is refused, so nothing reaches the server.
    before = srv.total
    with pytest.raises((us.Refused, us.FetchError)):
        us.fetch(f"http://rebind.example:{srv.port}/img/1.jpg", policy, timeout=1, deadline=2)
    assert srv.total == before


@pytest.mark.parametrize("path, reason", [
    ("/404", "HTTP 404"), ("/500", "HTTP 500"), ("/slow", "timeout"),
    ("/trickle", "too slow (fetch deadline)"), ("/trickle-headers", "too slow (fetch deadline)"),
    ("/huge-length", "body too large (Content-Length)"),
    ("/endless", "body too large (stream)"), ("/short-body", "truncated body"),
])
def test_fetch_failure_reasons(srv, path, reason):
    t = time.monotonic()
    with pytest.raises(us.FetchError) as exc:
        us.fetch(public(srv, path), POLICY, timeout=1, deadline=2, max_bytes=1_000_000)
    assert exc.value.reason == reason
    assert time.monotonic() - t < 6  # every failure is bounded in time


def test_fetch_ok_and_connection_refused(srv):
    data, headers = us.fetch(public(srv, "/img/5.jpg"), POLICY, timeout=2, deadline=3)
    assert data == srv.image(5, "jpg") and headers["Content-Type"] == "image/jpeg"
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(us.FetchError) as exc:
        us.fetch(f"http://127.0.0.1:{port}/x.jpg", us.Policy.make(allow_private=True), timeout=1, deadline=2)
    assert exc.value.reason == "connection refused"


def test_inspect_image():
    jpg = jpeg_bytes(make_image(1, 1, size=96))
    assert inspect_image(jpg, 1e9) is None
    assert inspect_image(png_bytes(make_image(2, 2)), 1e9) is None
    assert inspect_image(jpg[: len(jpg) // 2], 1e9) == "truncated image"
    assert inspect_image(b"<html>nope</html>", 1e9) == "not an image"
    assert inspect_image(b"", 1e9) == "not an image"
    assert inspect_image(bomb_png(), 89_478_485) == "image too large (pixels)"
    assert inspect_image(bomb_png(5000, 5000), 1_000_000) == "image too large (pixels)"  # under PIL's own limit
    assert inspect_image(jpg, 96 * 96 - 1) == "image too large (pixels)"
    png = png_bytes(make_image(3, 3))
    assert inspect_image(png[:-30], 1e9) == "truncated image"
    from PIL import Image

    assert Image.open(io.BytesIO(jpg)).size == (96, 96)


def test_allow_host_is_one_port_after_pinning_and_host_port_entries():
    """`--allow-host H` exempts H on the ports the input's urls use; `H:PORT` exempts that port only."""
    bare = us.Policy.make(allow_hosts=["127.0.0.1"]).pin_ports(
        ["http://127.0.0.1:8000/a.jpg", "https://127.0.0.1/b.jpg", "http://other.test/c.jpg", "not a url"])
    assert bare.allow_hosts == {"127.0.0.1:8000", "127.0.0.1:443"}
    assert bare.check_url("http://127.0.0.1:8000/x.jpg") == ("127.0.0.1", 8000)
    with pytest.raises(us.Refused, match="loopback"):
        bare.check_url("http://127.0.0.1:9000/secret")  # another service of the allowed host
    with pytest.raises(us.Refused):
        bare.addresses("127.0.0.1")  # no port, no exemption
    pinned = us.Policy.make(allow_hosts=["127.0.0.1:8000", "[::1]:8080", "Cdn.Test.:81"])
    assert pinned.allow_hosts == {"127.0.0.1:8000", "[::1]:8080", "cdn.test:81"}
    assert pinned.pin_ports(["http://127.0.0.1:9000/"]) is pinned  # explicit ports stay as given
    assert pinned.check_url("http://[::1]:8080/a.jpg") == ("::1", 8080)
    with pytest.raises(us.Refused):
        pinned.check_url("http://[::1]:8081/a.jpg")
    # the policy travels to img2dataset's process as JSON, pins included
    assert us.Policy.from_json(bare.to_json()) == bare
