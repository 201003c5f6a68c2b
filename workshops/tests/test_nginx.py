"""The nginx site: what the renderer writes, that nginx accepts it, and how a real nginx then behaves.

The behaviour tests run Debian's nginx in front of stub servers (tests/real_nginx.py): a hub whose
``/auth/seat`` decides from the session cookie like the real one, and seat frontends that record the raw
request target they received and accept WebSocket upgrades.
"""

from __future__ import annotations

import base64
import re
import socket
import ssl
import uuid
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
import requests
import websocket
from django.core.management import CommandError, call_command
from django.utils import timezone

from tests.real_nginx import (
    RealNginx,
    RecordedRequest,
    StubAnswer,
    StubDns,
    StubUpstream,
    free_port,
    nginx_binary,
    require_nginx,
    write_self_signed_certificate,
)
from workshops.models import Seat, SeatFrontend, Workshop
from workshops.nginx import NginxSeat, NginxSite, render_nginx
from workshops.services import create_workshop

SERVER_NAME = "workshop.test"


def make_site(**changes: Any) -> NginxSite:
    values: dict[str, Any] = {
        "server_name": "ws.example.org",
        "workshop": "may-2025",
        "hub": "web:8000",
        "seats": [NginxSeat(f"user{i:03d}", f"comfyume-seat-may-2025-user{i:03d}:8188") for i in (1, 2, 3)],
        "tls_certificate": "/etc/letsencrypt/live/ws.example.org/fullchain.pem",
        "tls_certificate_key": "/etc/letsencrypt/live/ws.example.org/privkey.pem",
        "max_upload_mb": 50,
        "static_root": "/srv/comfyume/staticfiles",
        "acme_webroot": "/var/www/certbot",
    }
    values.update(changes)
    return NginxSite(**values)


def location_body(text: str, opening: str) -> str:
    """The lines of the block that starts with ``opening`` (blocks in the rendered file do not nest deeper)."""
    start = text.index(opening + " {")
    return text[start : text.index("\n    }", start)]


# --- The renderer ------------------------------------------------------------------------------------


def test_every_seat_gets_its_routes_and_upstream():
    text = render_nginx(make_site())
    for label in ("user001", "user002", "user003"):
        body = location_body(text, f"location /{label}/")
        assert f"set $comfyume_seat {label};" in body
        assert "auth_request /_comfyume/auth;" in body
        assert f"upstream comfyume_may_2025_{label} {{\n    server comfyume-seat-may-2025-{label}:8188;" in text
        assert f"location = /{label} {{\n        return 301 /{label}/$is_args$args;" in text
    assert text.count("auth_request /_comfyume/auth;") == 3


def test_seats_are_proxied_without_a_uri_part_so_nginx_passes_the_uri_unchanged():
    text = render_nginx(make_site())
    passes = re.findall(r"proxy_pass (\S+);", location_body(text, "location /user002/"))
    # A URI part (even "/") would make nginx decode %2F in the path it forwards.
    assert passes == ["http://comfyume_may_2025_user002"]


def test_seat_locations_pass_websocket_upgrades_and_do_not_buffer():
    text = render_nginx(make_site())
    assert "map $http_upgrade $comfyume_may_2025_connection_upgrade {" in text
    assert "proxy_set_header Upgrade $http_upgrade;" in text
    assert "proxy_set_header Connection $comfyume_may_2025_connection_upgrade;" in text
    assert "proxy_http_version 1.1;" in text
    body = location_body(text, "location /user001/")
    assert "proxy_buffering off;" in body and "proxy_read_timeout 1h;" in body
    assert "error_page 401 = @comfyume_sign_in;" in body
    assert "return 302 /login/?next=$request_uri;" in location_body(text, "location @comfyume_sign_in")


def test_auth_endpoint_is_internal_and_closed_to_the_public():
    text = render_nginx(make_site())
    auth = location_body(text, "location = /_comfyume/auth")
    assert "internal;" in auth
    assert "proxy_pass http://comfyume_may_2025_hub/auth/seat;" in auth
    assert 'proxy_set_header X-Comfyume-Workshop "may-2025";' in auth
    assert "proxy_pass_request_body off;" in auth and "proxy_pass_request_headers off;" in auth
    assert "proxy_cache_valid 204 5s;" in auth and "proxy_cache_valid 40" not in auth
    assert "return 404;" in location_body(text, "location /auth/")


def test_upload_limit_static_acme_and_hub_routes():
    text = render_nginx(make_site(max_upload_mb=64))
    assert "client_max_body_size 64m;" in text
    assert "alias /srv/comfyume/staticfiles/;" in location_body(text, "location /static/")
    assert "root /var/www/certbot;" in location_body(text, "location /.well-known/acme-challenge/")
    assert "return 301 https://ws.example.org$request_uri;" in text
    assert "proxy_set_header X-Forwarded-Proto https;" in text
    assert "proxy_pass http://comfyume_may_2025_hub;" in location_body(text, "location /ws/")


def test_optional_parts_are_left_out():
    text = render_nginx(make_site(static_root=None, acme_webroot=None, auth_cache_seconds=0, listen_https=8443))
    assert "location /static/" not in text and "acme-challenge" not in text
    assert "proxy_cache" not in text
    assert "return 301 https://ws.example.org:8443$request_uri;" in text


def test_a_workshop_without_seats_renders_the_hub_only():
    text = render_nginx(make_site(seats=[]))
    assert "auth_request" not in text and "$comfyume_seat" not in text and "proxy_cache_path" not in text
    assert "location / {" in text


def test_with_a_resolver_names_are_looked_up_per_request_and_ips_keep_keepalive_upstreams():
    seats = [NginxSeat("user001", "comfyume-seat-may-user001:8188"), NginxSeat("user002", "10.0.0.7:8188")]
    text = render_nginx(make_site(seats=seats, resolver="127.0.0.11"))
    assert "resolver 127.0.0.11 valid=10s ipv6=off;" in text
    first = location_body(text, "location /user001/")
    assert 'set $comfyume_seat_address "comfyume-seat-may-user001:8188";' in first
    assert "proxy_pass http://$comfyume_seat_address;" in first
    assert "upstream comfyume_may_2025_user001" not in text
    assert "upstream comfyume_may_2025_user002 {\n    server 10.0.0.7:8188;\n    keepalive 4;" in text
    assert 'set $comfyume_hub_address "web:8000";' in location_body(text, "location = /_comfyume/auth")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"seats": [NginxSeat("user001", "a:1")] * 2}, "seats[1].label"),
        ({"server_name": "ws.example.org; root /"}, "server_name"),
        ({"server_name": "ws example org"}, "server_name"),
        ({"server_name": "ws.example.org\n"}, "server_name"),
        ({"server_name": "ws.example.org\nlocation /x"}, "server_name"),
        ({"server_name": "*.example.org"}, "server_name"),
        ({"server_name": ""}, "server_name"),
        ({"workshop": 'may"; }'}, "workshop"),
        ({"workshop": "may 2025"}, "workshop"),
        ({"hub": "web"}, "hub"),
        ({"hub": "web:8000;"}, "hub"),
        ({"hub": "web:99999"}, "hub"),
        ({"hub": "we b:8000"}, "hub"),
        ({"tls_certificate": "relative/cert.pem"}, "tls_certificate"),
        ({"tls_certificate": "/etc/cert.pem\n"}, "tls_certificate"),
        ({"workshop": "may\n"}, "workshop"),
        ({"tls_certificate_key": "/etc/key.pem; include /etc/passwd"}, "tls_certificate_key"),
        ({"static_root": "/srv/static files"}, "static_root"),
        ({"acme_webroot": "/var/www/$host"}, "acme_webroot"),
        ({"auth_cache_dir": "/var/cache/{x}"}, "auth_cache_dir"),
        ({"max_upload_mb": 0}, "max_upload_mb"),
        ({"max_upload_mb": True}, "max_upload_mb"),
        ({"max_upload_mb": "50"}, "max_upload_mb"),
        ({"listen_https": 80}, "listen_https"),
        ({"listen_http": 0}, "listen_http"),
        ({"auth_cache_seconds": -1}, "auth_cache_seconds"),
        ({"resolver": "dns.google"}, "resolver"),
        ({"resolver": "::1"}, "resolver"),
    ],
)
def test_a_value_that_could_inject_nginx_syntax_is_refused_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=re.escape(field)):
        make_site(**changes)


@pytest.mark.parametrize(
    ("label", "address"),
    [
        ("user001; }", "a:1"),
        ("user001\n", "a:1"),
        ("User001", "a:1"),
        ("", "a:1"),
        ("user/001", "a:1"),
        ("user001", "a:1; }"),
        ("user001", "a:1\nserver evil:80"),
        ("user001", "[::1:80"),
        ("user001", "a"),
        ("user001", "a:1\n"),
    ],
)
def test_a_bad_seat_is_refused_naming_the_field(label, address):
    field = "label" if label != "user001" else "address"
    with pytest.raises(ValueError, match=f"^{field}: "):
        NginxSeat(label, address)


def test_a_seat_list_changed_after_validation_is_checked_again_when_rendering():
    site = make_site()
    site.seats.append(NginxSeat("user001", "elsewhere:8188"))
    with pytest.raises(ValueError, match=re.escape("seats[3].label")):
        render_nginx(site)


def test_good_addresses_are_accepted():
    for address in ("127.0.0.1:8101", "[::1]:8188", "comfyume-seat-may_2025-user001:8188", "web:8000"):
        assert NginxSeat("user_01-a", address).address == address
    assert make_site(resolver="[::1]:53").resolver == "[::1]:53"


# --- nginx -t ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    return write_self_signed_certificate(tmp_path_factory.mktemp("tls"), SERVER_NAME)


@pytest.mark.parametrize(("count", "resolver"), [(0, None), (3, None), (3, "127.0.0.11"), (300, None)])
def test_nginx_accepts_the_rendered_site(tmp_path, certificate, count, resolver):
    require_nginx()
    seats = [NginxSeat(f"user{i:03d}", f"127.0.{i // 250}.{i % 250 + 1}:8188") for i in range(1, count + 1)]
    if resolver:  # names are only resolved when a request comes
        seats = [NginxSeat(s.label, f"comfyume-seat-may-2025-{s.label}:8188") for s in seats]
    site = make_site(
        seats=seats,
        hub="127.0.0.1:8000",
        tls_certificate=str(certificate[0]),
        tls_certificate_key=str(certificate[1]),
        auth_cache_dir=str(tmp_path / "auth-cache"),
        resolver=resolver,
    )
    nginx = RealNginx(tmp_path / "nginx").write(render_nginx(site))
    result = nginx.test()
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "auth-cache").is_dir() == bool(count)


# --- A real nginx in front of stubs ------------------------------------------------------------------

BASIC_USER001 = "Basic " + base64.b64encode(b"user001:secret").decode()


def hub_answer(request: RecordedRequest) -> StubAnswer:
    """Like the hub's seat check: the session cookie names a seat it owns (``<anything>-userNNN``), staff
    (``staff-…``), an unknown seat (``gone-…``) or a broken hub (``broken-…``); Basic is user001's."""
    if not request.path.startswith("/auth/seat"):
        return StubAnswer(200, {"Content-Type": "text/plain"}, b"hub " + request.path.encode())
    seat = (request.header("X-Original-URI") or "").split("/")[1]
    cookies = dict(part.strip().split("=", 1) for part in (request.header("Cookie") or "").split(";") if "=" in part)
    session = cookies.get("sessionid", "")
    # The real hub marks every answer no-store and varies on Cookie; nginx must cache 204s anyway.
    headers = {"Cache-Control": "no-store", "Vary": "Cookie"}
    if request.header("Authorization") == BASIC_USER001 and not session:
        return StubAnswer(204 if seat == "user001" else 403, headers)
    if not session:
        return StubAnswer(401, headers)
    if session.startswith("gone-"):
        return StubAnswer(404, headers)
    if session.startswith("broken-"):
        return StubAnswer(500, headers)
    if session.startswith("staff-") or session.endswith(f"-{seat}"):
        return StubAnswer(204, headers)
    return StubAnswer(403, headers)


class Proxy:
    """The running nginx and its stubs, with a requests session that trusts the test certificate."""

    def __init__(self, tmp: Path, certificate: tuple[Path, Path]) -> None:
        self.hub = StubUpstream("hub", hub_answer).start()
        self.seats = {label: StubUpstream(label).start() for label in ("user001", "user002")}
        self.https, self.http = free_port(), free_port()
        self.static = tmp / "static"
        (self.static / "css").mkdir(parents=True)
        (self.static / "css" / "app.css").write_text("body{}")
        self.webroot = tmp / "certbot"
        (self.webroot / ".well-known" / "acme-challenge").mkdir(parents=True)
        (self.webroot / ".well-known" / "acme-challenge" / "tok3n").write_text("tok3n.key")
        self.cert = certificate[0]
        self.site = NginxSite(
            server_name=SERVER_NAME,
            workshop="may-2025",
            hub=self.hub.address,
            seats=[
                NginxSeat("user001", self.seats["user001"].address),
                NginxSeat("user002", self.seats["user002"].address),
                NginxSeat("user003", f"127.0.0.1:{free_port()}"),  # its frontend is down
            ],
            tls_certificate=str(certificate[0]),
            tls_certificate_key=str(certificate[1]),
            max_upload_mb=1,
            static_root=str(self.static),
            acme_webroot=str(self.webroot),
            listen_http=self.http,
            listen_https=self.https,
            auth_cache_dir=str(tmp / "auth-cache"),
            # Long enough that a slow test machine never sees an allowed answer expire between two requests.
            auth_cache_seconds=30,
        )
        self.nginx = RealNginx(tmp / "nginx").write(render_nginx(self.site)).start(self.https)
        self.base = f"https://127.0.0.1:{self.https}"

    def get(self, path: str, session: str | None = None, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, session, **kwargs)

    def request(self, method: str, path: str, session: str | None = None, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if session is not None:
            headers["Cookie"] = f"csrftoken=abc; sessionid={session}"
        kwargs.setdefault("allow_redirects", False)
        return requests.request(method, self.base + path, headers=headers, verify=str(self.cert), timeout=10, **kwargs)

    def auth_checks(self, session: str) -> list[RecordedRequest]:
        return self.hub.seen(lambda r: r.path == "/auth/seat" and f"sessionid={session}" in (r.header("Cookie") or ""))

    def stop(self) -> None:
        self.nginx.stop()
        for stub in (self.hub, *self.seats.values()):
            stub.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory, certificate) -> Iterator[Proxy]:
    require_nginx()
    running = Proxy(tmp_path_factory.mktemp("proxy"), certificate)
    yield running
    running.stop()


def session_for(label: str) -> str:
    return f"{uuid.uuid4().hex}-{label}"


def test_an_encoded_slash_reaches_the_seat_unchanged(proxy):
    path = "/user001/api/userdata/workflows%2Fmy%20flow.json?overwrite=true"
    response = proxy.get(path, session_for("user001"))
    assert response.status_code == 200, response.text
    assert response.json()["path"] == path


def test_a_browser_without_a_session_is_sent_to_sign_in(proxy):
    response = proxy.get("/user001/some/page?tab=2")
    assert response.status_code == 302
    assert response.headers["Location"] == "/login/?next=/user001/some/page?tab=2"
    assert not proxy.seats["user001"].seen(lambda r: r.path.startswith("/user001/some/page"))


def test_someone_elses_seat_is_refused_before_it_is_reached(proxy):
    response = proxy.get("/user002/api/queue", session_for("user001"))
    assert response.status_code == 403
    assert not proxy.seats["user002"].seen(lambda r: r.path == "/user002/api/queue")


def test_staff_and_http_basic_are_let_through(proxy):
    assert proxy.get("/user002/api/queue", "staff-" + uuid.uuid4().hex).status_code == 200
    response = proxy.get("/user001/api/basic-check", headers={"Authorization": BASIC_USER001})
    assert response.status_code == 200
    check = proxy.hub.seen(
        lambda r: r.path == "/auth/seat" and r.header("X-Original-URI") == "/user001/api/basic-check"
    )
    assert check[-1].header("Authorization") == BASIC_USER001


def test_the_auth_subrequest_carries_what_the_hub_decides_from_and_nothing_else(proxy):
    session = session_for("user001")
    response = proxy.request(
        "POST",
        "/user001/api/prompt?x=1",
        session,
        data=b'{"prompt": {}}',
        headers={"X-Comfyume-Seat-Token": "seat_stolen", "X-Something": "else", "X-Real-IP": "6.6.6.6"},
    )
    assert response.status_code == 200
    (check,) = proxy.auth_checks(session)
    assert check.method == "GET" and check.body_length == 0
    assert check.header("X-Original-URI") == "/user001/api/prompt?x=1"
    assert check.header("X-Original-Method") == "POST"
    assert check.header("X-Comfyume-Workshop") == "may-2025"
    assert check.header("Cookie") == f"csrftoken=abc; sessionid={session}"
    assert check.header("X-Forwarded-Proto") == "https" and check.header("X-Real-IP") == "127.0.0.1"
    assert check.header("X-Comfyume-Seat-Token") is None and check.header("X-Something") is None
    # The body still reaches the seat after the check, and a seat token from outside does not.
    (seen,) = proxy.seats["user001"].seen(lambda r: r.path == "/user001/api/prompt?x=1" and r.method == "POST")
    assert seen.body_length == len(b'{"prompt": {}}')
    assert seen.header("X-Comfyume-Seat-Token") in (None, "")


def test_allowed_answers_are_cached_per_seat_and_refusals_never(proxy):
    session = session_for("user001")
    for _ in range(3):
        assert proxy.get("/user001/assets/app.js", session).status_code == 200
    assert len(proxy.auth_checks(session)) == 1
    # The same session on another seat is a new question (a key without the seat would let it through).
    assert proxy.get("/user002/assets/app.js", session).status_code == 403
    assert proxy.get("/user002/assets/app.js", session).status_code == 403
    assert len(proxy.auth_checks(session)) == 3


def test_the_hubs_404_and_failures_are_passed_on(proxy):
    assert proxy.get("/user001/", "gone-" + uuid.uuid4().hex).status_code == 404
    assert proxy.get("/user001/", "broken-" + uuid.uuid4().hex).status_code == 502


def test_a_seat_whose_frontend_is_down_answers_502_alone(proxy):
    assert proxy.get("/user003/", "staff-" + uuid.uuid4().hex).status_code == 502
    assert proxy.get("/user001/", "staff-" + uuid.uuid4().hex).status_code == 200


def test_an_oversized_upload_is_refused_with_413(proxy):
    session = session_for("user001")
    files = {"image": ("big.png", b"\0" * (2 * 1024 * 1024), "image/png")}
    response = proxy.request("POST", "/user001/api/upload/image", session, files=files)
    assert response.status_code == 413
    assert not proxy.seats["user001"].seen(lambda r: r.path == "/user001/api/upload/image")
    small = {"image": ("small.png", b"\0" * (512 * 1024), "image/png")}
    assert proxy.request("POST", "/user001/api/upload/image", session, files=small).status_code == 200


@pytest.mark.parametrize("path", ["/auth/seat", "/%61uth/seat", "//auth/seat", "/_comfyume/auth"])
def test_the_auth_endpoint_is_not_reachable_from_outside(proxy, path):
    before = len(proxy.hub.requests)
    response = proxy.get(path, "staff-" + uuid.uuid4().hex, headers={"X-Original-URI": "/user001/"})
    assert response.status_code == 404
    assert len(proxy.hub.requests) == before


def test_a_websocket_upgrade_reaches_the_seat(proxy):
    session = session_for("user002")
    ws = websocket.create_connection(
        f"wss://127.0.0.1:{proxy.https}/user002/ws?clientId=abc",
        sslopt={"ca_certs": str(proxy.cert)},
        cookie=f"sessionid={session}",
        timeout=10,
    )
    try:
        assert ws.getstatus() == 101
        ws.send("hello through nginx")
        assert ws.recv() == "hello through nginx"
    finally:
        ws.close()
    (upgrade,) = proxy.seats["user002"].seen(lambda r: r.websocket and r.path == "/user002/ws?clientId=abc")
    assert upgrade.header("Connection").lower() == "upgrade"
    assert proxy.auth_checks(session)[0].header("X-Original-URI") == "/user002/ws?clientId=abc"


def raw_upgrade(proxy: Proxy, path: str) -> tuple[str, dict[str, str]]:
    """Send a WebSocket handshake by hand and read nginx's answer (websocket-client would follow a redirect)."""
    context = ssl.create_default_context(cafile=str(proxy.cert))
    with (
        socket.create_connection(("127.0.0.1", proxy.https), timeout=10) as plain,
        context.wrap_socket(plain, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {SERVER_NAME}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := tls.recv(4096)):
            answer += chunk
    status, *lines = answer.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    return status, dict(line.split(": ", 1) for line in lines)


def test_a_websocket_without_a_session_is_not_upgraded(proxy):
    status, headers = raw_upgrade(proxy, "/user002/ws?clientId=x")
    assert status.startswith("HTTP/1.1 302")
    assert headers["Location"] == "/login/?next=/user002/ws?clientId=x"
    assert not proxy.seats["user002"].seen(lambda r: r.path == "/user002/ws?clientId=x")


def test_everything_else_reaches_the_hub_with_forwarded_headers(proxy):
    response = proxy.get("/something?a=%2F", headers={"X-Real-IP": "6.6.6.6", "X-Comfyume-Seat-Token": "seat_x"})
    assert response.status_code == 200 and response.text == "hub /something?a=%2F"
    (seen,) = proxy.hub.seen(lambda r: r.path == "/something?a=%2F")
    assert seen.header("X-Forwarded-Proto") == "https"
    assert seen.header("X-Real-IP") == "127.0.0.1"  # the client's own claim is replaced
    assert seen.header("X-Forwarded-For").endswith("127.0.0.1")
    assert seen.header("Host") == "127.0.0.1"
    assert seen.header("X-Comfyume-Seat-Token") in (None, "")
    assert proxy.get("/ws/hub/seat/").text == "hub /ws/hub/seat/"
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000"


def test_a_seat_without_its_trailing_slash_is_redirected(proxy):
    response = proxy.get("/user001?x=1")
    assert response.status_code == 301 and response.headers["Location"] == "/user001/?x=1"


def test_static_files_are_served_by_nginx(proxy):
    before = len(proxy.hub.requests)
    response = proxy.get("/static/css/app.css")
    assert response.status_code == 200 and response.text == "body{}"
    assert len(proxy.hub.requests) == before


def test_plain_http_serves_acme_challenges_and_redirects_the_rest(proxy):
    challenge = requests.get(f"http://127.0.0.1:{proxy.http}/.well-known/acme-challenge/tok3n", timeout=10)
    assert challenge.status_code == 200 and challenge.text == "tok3n.key"
    response = requests.get(f"http://127.0.0.1:{proxy.http}/user001/x?y=1", allow_redirects=False, timeout=10)
    assert response.status_code == 301
    assert response.headers["Location"] == f"https://{SERVER_NAME}:{proxy.https}/user001/x?y=1"


def test_with_a_resolver_nginx_starts_without_every_seat_and_looks_names_up_per_request(tmp_path, certificate):
    """A seat container that does not exist (no DNS name) must not keep nginx from starting."""
    require_nginx()
    hub = StubUpstream("hub", hub_answer).start()
    seat = StubUpstream("user001").start()
    dns = StubDns({"seat-one.test": "127.0.0.1", "hub.test": "127.0.0.1"}).start()
    https = free_port()
    site = NginxSite(
        server_name=SERVER_NAME,
        workshop="w",
        hub=f"hub.test:{hub.port}",
        seats=[NginxSeat("user001", f"seat-one.test:{seat.port}"), NginxSeat("user002", "seat-missing.test:8188")],
        tls_certificate=str(certificate[0]),
        tls_certificate_key=str(certificate[1]),
        max_upload_mb=1,
        static_root=None,
        acme_webroot=None,
        listen_http=free_port(),
        listen_https=https,
        auth_cache_dir=str(tmp_path / "auth-cache"),
        resolver=dns.address,
    )
    try:
        with RealNginx(tmp_path / "nginx").write(render_nginx(site)).start(https):
            base, cookie = f"https://127.0.0.1:{https}", {"Cookie": "sessionid=staff-1"}
            ok = requests.get(f"{base}/user001/api/userdata/a%2Fb.json", headers=cookie, verify=str(certificate[0]))
            assert ok.status_code == 200 and ok.json()["path"] == "/user001/api/userdata/a%2Fb.json"
            missing = requests.get(f"{base}/user002/", headers=cookie, verify=str(certificate[0]), timeout=15)
            assert missing.status_code == 502
            assert {"seat-one.test", "hub.test", "seat-missing.test"} <= set(dns.queries)
    finally:
        for stub in (hub, seat, dns):
            stub.stop()


# --- manage.py render_nginx --------------------------------------------------------------------------


def render(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("render_nginx", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


@pytest.fixture
def seat_settings(settings):
    settings.SEAT_FRONTENDS = {**settings.SEAT_FRONTENDS, "DRIVER": "process", "BIND_HOST": "127.0.0.1"}
    settings.PUBLIC_URL = "https://ws.example.org"
    return settings


def _workshop_with_frontends(slug: str = "may", port: int = 18101) -> Workshop:
    workshop, _ = create_workshop(slug, seats=3)
    seats = list(Seat.objects.filter(workshop=workshop).order_by("label"))
    SeatFrontend.objects.create(seat=seats[0], port=port, address="10.0.0.5:8188")
    SeatFrontend.objects.create(seat=seats[1], port=port + 1)  # started by the process driver, address not seen yet
    return workshop


@pytest.mark.django_db
def test_command_renders_the_only_open_workshop_and_names_seats_it_cannot_route(seat_settings):
    _workshop_with_frontends()
    out, err = render()
    assert "server_name ws.example.org;" in out
    assert "ssl_certificate /etc/letsencrypt/live/ws.example.org/fullchain.pem;" in out
    assert "server 10.0.0.5:8188;" in out and "server 127.0.0.1:18102;" in out
    assert "location /user003/" not in out
    assert "user003" in err and "no frontend address" in err
    assert "upstream comfyume_may_hub {\n    server web:8000;" in out
    assert f"client_max_body_size {seat_settings.SEAT_FRONTENDS['MAX_UPLOAD_MB']}m;" in out
    assert f"alias {seat_settings.STATIC_ROOT}/;" in out and "root /var/www/certbot;" in out
    assert "resolver" not in out


@pytest.mark.django_db
def test_command_with_the_docker_driver_routes_every_seat_by_container_name(seat_settings):
    seat_settings.SEAT_FRONTENDS = {**seat_settings.SEAT_FRONTENDS, "DRIVER": "docker"}
    _workshop_with_frontends()
    out, err = render("--hub", "web:9000", "--static-root", "", "--acme-webroot", "")
    assert 'set $comfyume_seat_address "comfyume-seat-may-user003:8188";' in out
    assert "server 10.0.0.5:8188;" in out  # the address the supervisor recorded wins
    assert "resolver 127.0.0.11 valid=10s" in out and 'set $comfyume_hub_address "web:9000";' in out
    assert "location /static/" not in out and "acme-challenge" not in out
    assert err == ""


@pytest.mark.django_db
def test_command_writes_the_file_and_options_override_defaults(seat_settings, tmp_path):
    _workshop_with_frontends()
    target = tmp_path / "conf.d" / "comfyume.conf"
    out, _ = render("--output", str(target), "--server-name", "other.example.org", "--tls-cert", "/c.pem",
                    "--tls-key", "/k.pem")  # fmt: skip
    text = target.read_text()
    assert "server_name other.example.org;" in text and "ssl_certificate /c.pem;" in text
    assert "ssl_certificate_key /k.pem;" in text
    assert f"Wrote {target}: 2 seat route(s) of may" in out
    assert list(target.parent.iterdir()) == [target]  # no temp file left behind


@pytest.mark.django_db
def test_command_chooses_between_workshops_only_when_told(seat_settings):
    _workshop_with_frontends("may")
    _workshop_with_frontends("june", port=18201)
    archived, _ = create_workshop("april", seats=1)
    Workshop.objects.filter(pk=archived.pk).update(archived_at=timezone.now())
    with pytest.raises(CommandError, match=r"Several workshops are not archived \(june, may\)"):
        render()
    out, _ = render("--workshop", "june")
    assert 'X-Comfyume-Workshop "june"' in out
    with pytest.raises(CommandError, match="No workshop called 'nope'"):
        render("--workshop", "nope")


@pytest.mark.django_db
def test_command_refuses_values_that_would_break_the_file(seat_settings):
    _workshop_with_frontends()
    with pytest.raises(CommandError, match="server_name"):
        render("--server-name", "ws.example.org; include /etc/passwd")
    with pytest.raises(CommandError, match="hub"):
        render("--hub", "web")
    SeatFrontend.objects.filter(address="10.0.0.5:8188").update(address="10.0.0.5:8188; }")
    with pytest.raises(CommandError, match="address"):
        render()


@pytest.mark.django_db
def test_command_check_validates_with_nginx_before_writing(seat_settings, tmp_path):
    require_nginx()
    seat_settings.SEAT_FRONTENDS = {**seat_settings.SEAT_FRONTENDS, "DRIVER": "docker"}
    _workshop_with_frontends()
    target = tmp_path / "site.conf"
    out, _ = render("--check", "--output", str(target))
    assert "nginx -t: the site for may is valid" in out
    assert "a throwaway certificate" in out and "127.0.0.1 for the hub's host name" in out
    assert target.exists()

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    other = tmp_path / "other.conf"
    with pytest.raises(CommandError, match="nginx -t rejected the site") as excinfo:
        render("--check", "--output", str(other), "--tls-cert", str(garbage), "--tls-key", str(garbage))
    assert "garbage.pem" in str(excinfo.value)
    assert not other.exists()


@pytest.mark.django_db
def test_command_check_without_nginx_is_a_clear_error(seat_settings, tmp_path):
    _workshop_with_frontends()
    with pytest.raises(CommandError, match="--check needs nginx, which is not installed here"):
        render("--check", "--nginx", str(tmp_path / "no-nginx"))


def test_real_nginx_helper_finds_the_binary_or_skips():
    binary = nginx_binary()
    if binary is None:
        with pytest.raises(pytest.skip.Exception):
            require_nginx()
    else:
        assert require_nginx() == binary
