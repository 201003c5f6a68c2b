"""The nginx site for one workshop: TLS, ``/userNNN/`` to each seat's frontend behind ``auth_request``, the rest
to the hub.

Pure rendering (no database, no settings): ``manage.py render_nginx`` gathers the facts, :func:`render_nginx`
turns them into an http-context file that a main ``nginx.conf`` includes inside ``http {}``. Every string that
lands in the file is checked against a strict pattern first, because a seat label or host name containing
``;``, ``{`` or a newline would otherwise write nginx syntax of its own.

Why the file looks the way it does:

- Seat routes use ``proxy_pass`` WITHOUT a URI part, so nginx forwards the request URI exactly as the browser
  sent it. The seat frontend strips its own ``/userNNN/`` prefix; with a URI part nginx would decode ``%2F``
  in userdata paths (``workflows%2Fa.json``) and the frontend would answer 405, as the system we replace did.
- Every seat request (the WebSocket upgrade included) is authorized by a subrequest to the hub's
  ``/auth/seat``. The subrequest carries only what the hub decides from — the original URI and method, the
  workshop, the browser's ``Cookie`` and ``Authorization`` — so a client cannot slip the hub other headers
  (a seat token, say) through it. Allowed answers are cached for a few seconds under exactly those inputs
  plus the seat label, so a page load's dozens of asset requests cost the hub one check; refusals are never
  cached, so signing in takes effect at once.
- nginx resolves the host names of ``upstream`` servers once, when it starts or reloads, and refuses to start
  when one does not resolve (a stopped seat container has no DNS name). With ``resolver`` set, addresses
  given as names are looked up per request instead: nginx starts whatever state the seats are in, a missing
  seat answers 502 on its own, and a re-created container's new address is picked up. IP addresses keep
  ``upstream`` blocks with keep-alive connections either way.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

# The seat label is pasted into location paths, upstream and variable names: lowercase letters, digits, _ and -.
# Patterns are used with fullmatch: `$` alone would let a trailing newline (and with it a new directive) through.
LABEL_RE = re.compile(r"^[a-z0-9_-]{1,32}$")
# A Django slug (the workshop), sent to the hub in a quoted header value.
SLUG_RE = re.compile(r"^[A-Za-z0-9_-]{1,50}$")
# DNS names, IPv4 addresses and Docker container names (which may hold underscores).
_DNS_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
HOSTNAME_RE = re.compile(rf"^{_DNS_LABEL}(?:\.{_DNS_LABEL})*$")
# Absolute file-system paths without spaces, quotes, semicolons, braces or nginx variables.
PATH_RE = re.compile(r"^/[A-Za-z0-9._/+@=,-]*$")

# How long a seat's WebSocket may stay silent, and a slow seat response may take, before nginx closes it.
SEAT_TIMEOUT = "1h"
# Admin actions such as creating a 200-seat workshop (one password hash per seat) run for minutes.
HUB_TIMEOUT = "300s"
# The auth check is a couple of database reads; a hub that cannot answer in this time is treated as down.
AUTH_TIMEOUT = "15s"
# How long nginx keeps a name it looked up through ``resolver`` (Docker re-creates containers with new IPs).
RESOLVER_VALID = "10s"


@dataclass(frozen=True)
class NginxSeat:
    """One seat's route: ``/<label>/`` goes to the frontend at ``address`` (``host:port``)."""

    label: str
    address: str

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, prefix: str = "") -> None:
        _check_label(f"{prefix}label", self.label)
        _check_address(f"{prefix}address", self.address)


@dataclass(frozen=True)
class NginxSite:
    """Everything the site file for one workshop depends on; invalid values raise ``ValueError`` on creation."""

    server_name: str
    workshop: str  # the workshop's slug, sent to the hub with every auth check
    hub: str  # host:port of the hub (daphne)
    seats: list[NginxSeat]
    tls_certificate: str
    tls_certificate_key: str
    max_upload_mb: int
    static_root: str | None  # served by nginx under /static/ when given; else the hub (whitenoise) serves it
    acme_webroot: str | None  # certbot's --webroot-path, served under /.well-known/acme-challenge/ over HTTP
    listen_http: int = 80
    listen_https: int = 443
    auth_cache_dir: str = "/var/cache/nginx/comfyume-auth"
    auth_cache_seconds: int = 5  # 0: ask the hub on every request
    # A DNS server (IP[:port]) to resolve name addresses per request with; see the module docstring.
    # Docker's embedded DNS is 127.0.0.11. None: names are resolved once, when nginx starts.
    resolver: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field whose value could not be pasted safely into the file."""
        if (
            not isinstance(self.server_name, str)
            or len(self.server_name) > 253
            or not HOSTNAME_RE.fullmatch(self.server_name)
        ):
            raise ValueError(f"server_name: {self.server_name!r} is not a host name.")
        if not isinstance(self.workshop, str) or not SLUG_RE.fullmatch(self.workshop):
            raise ValueError(f"workshop: {self.workshop!r} is not a slug (letters, digits, '_' and '-').")
        _check_address("hub", self.hub)
        seen: set[str] = set()
        for index, seat in enumerate(self.seats):
            if not isinstance(seat, NginxSeat):
                raise ValueError(f"seats[{index}]: {seat!r} is not an NginxSeat.")
            seat.validate(prefix=f"seats[{index}].")
            if seat.label in seen:
                raise ValueError(f"seats[{index}].label: {seat.label!r} appears twice.")
            seen.add(seat.label)
        _check_path("tls_certificate", self.tls_certificate)
        _check_path("tls_certificate_key", self.tls_certificate_key)
        _check_path("auth_cache_dir", self.auth_cache_dir)
        if self.static_root is not None:
            _check_path("static_root", self.static_root)
        if self.acme_webroot is not None:
            _check_path("acme_webroot", self.acme_webroot)
        _check_int("max_upload_mb", self.max_upload_mb, 1, 100 * 1024)
        _check_int("listen_http", self.listen_http, 1, 65535)
        _check_int("listen_https", self.listen_https, 1, 65535)
        if self.listen_http == self.listen_https:
            raise ValueError(f"listen_https: {self.listen_https} is also listen_http.")
        _check_int("auth_cache_seconds", self.auth_cache_seconds, 0, 3600)
        if self.resolver is not None:
            _check_resolver("resolver", self.resolver)

    @property
    def prefix(self) -> str:
        """Upstream, zone and variable names are nginx-global: prefixed per workshop, two sites can share an nginx."""
        return "comfyume_" + self.workshop.lower().replace("-", "_")


def _check_label(name: str, value: object) -> None:
    if not isinstance(value, str) or not LABEL_RE.fullmatch(value):
        raise ValueError(f"{name}: {value!r} is not a safe seat label (a-z, 0-9, '_' and '-', at most 32).")


def _split_address(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("no port")
    if host.startswith("[") and host.endswith("]"):
        ipaddress.IPv6Address(host[1:-1])  # raises ValueError
    elif len(host) > 253 or not HOSTNAME_RE.fullmatch(host):
        raise ValueError("bad host")
    return host, int(port)


def _check_address(name: str, value: object) -> None:
    try:
        if not isinstance(value, str):
            raise ValueError("not a string")
        _split_address(value)
    except ValueError:
        raise ValueError(f"{name}: {value!r} is not a host:port address.") from None


def _check_resolver(name: str, value: object) -> None:
    """IPv4, IPv4:port, [IPv6] or [IPv6]:port: a name would need a resolver itself."""
    try:
        if not isinstance(value, str):
            raise ValueError("not a string")
        if value.startswith("[") and value.endswith("]"):
            ipaddress.IPv6Address(value[1:-1])
        elif value.count(":") == 0:
            ipaddress.IPv4Address(value)
        else:
            host, _port = _split_address(value)
            ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError(
            f"{name}: {value!r} is not an IP address (IPv6 in brackets), with an optional :port."
        ) from None


def _check_path(name: str, value: object) -> None:
    if not isinstance(value, str) or not PATH_RE.fullmatch(value):
        raise ValueError(f"{name}: {value!r} is not an absolute path of letters, digits and ._/+@=,-")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name}: {value!r} is not a whole number from {low} to {high}.")


def _is_ip(address: str) -> bool:
    host = address.rpartition(":")[0].strip("[]")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _Backend:
    """How one address is proxied to: an ``upstream`` block with keep-alive, or a per-request DNS lookup."""

    def __init__(self, site: NginxSite, name: str, address: str, *, keepalive: int, variable: str) -> None:
        self.address = address
        self.keepalive = keepalive
        self.upstream = f"{site.prefix}_{name}"
        # Seats and the hub use different variables: the auth subrequest shares its parent's variables, so
        # one name would let the hub's address overwrite the seat's before the seat request is proxied.
        self.variable = variable
        self.per_request = site.resolver is not None and not _is_ip(address)

    def upstream_block(self) -> list[str]:
        if self.per_request:
            return []
        return [
            f"upstream {self.upstream} {{",
            f"    server {self.address};",
            f"    keepalive {self.keepalive};",
            "}",
        ]

    def proxy_pass(self, indent: str, uri: str = "") -> list[str]:
        """``proxy_pass`` lines; without ``uri`` nginx sends the client's request URI unchanged."""
        if self.per_request:
            # A variable makes nginx resolve the name when a request comes; without a URI part it still
            # sends the request URI as the client sent it.
            return [
                f'{indent}set ${self.variable} "{self.address}";',
                f"{indent}proxy_pass http://${self.variable}{uri};",
            ]
        return [f"{indent}proxy_pass http://{self.upstream}{uri};"]


def _https_redirect(site: NginxSite) -> str:
    port = "" if site.listen_https == 443 else f":{site.listen_https}"
    return f"return 301 https://{site.server_name}{port}$request_uri;"


def render_nginx(site: NginxSite) -> str:
    """The site file for ``site``: include it inside the main configuration's ``http {}``."""
    site.validate()  # the dataclass checked itself on creation; the seats list may have been changed since
    p = site.prefix
    hub = _Backend(site, "hub", site.hub, keepalive=32, variable="comfyume_hub_address")
    seats = [
        (seat, _Backend(site, seat.label, seat.address, keepalive=4, variable="comfyume_seat_address"))
        for seat in site.seats
    ]
    upgrade = f"${p}_connection_upgrade"
    out: list[str] = [
        f"# nginx site for the ComfyuME workshop {site.workshop!r} at https://{site.server_name}/",
        "# Rendered by `manage.py render_nginx`; edit the workshop or the command's options, not this file.",
        f"# {len(site.seats)} seat route(s). Include inside http {{}}.",
        "",
        "# WebSocket upgrades pass through; other requests send no Connection header, so keep-alive works.",
        f"map $http_upgrade {upgrade} {{",
        "    default upgrade;",
        '    ""      "";',
        "}",
        "",
    ]
    if site.resolver is not None:
        out += [f"resolver {site.resolver} valid={RESOLVER_VALID} ipv6=off;", "resolver_timeout 5s;", ""]
    if site.auth_cache_seconds and site.seats:
        out += [
            "# The hub's 204 answers to seat checks, for a few seconds (see the auth location).",
            f"proxy_cache_path {site.auth_cache_dir} levels=1:2 keys_zone={p}_auth:4m max_size=64m inactive=1m"
            " use_temp_path=off;",
            "",
        ]
    out += hub.upstream_block()
    for _seat, backend in seats:
        out += backend.upstream_block()
    out += ["", *_http_server(site), "", *_tls_server(site, hub, seats, upgrade), ""]
    return "\n".join(out)


def _http_server(site: NginxSite) -> list[str]:
    lines = [
        "server {",
        f"    listen {site.listen_http};",
        f"    server_name {site.server_name};",
        "    server_tokens off;",
        "",
    ]
    if site.acme_webroot is not None:
        lines += [
            "    # Let's Encrypt HTTP-01 challenges (certbot certonly --webroot) must stay reachable over plain HTTP.",
            "    location /.well-known/acme-challenge/ {",
            f"        root {site.acme_webroot};",
            "        default_type text/plain;",
            "    }",
            "",
        ]
    lines += ["    location / {", f"        {_https_redirect(site)}", "    }", "}"]
    return lines


def _tls_server(site: NginxSite, hub: _Backend, seats: list[tuple[NginxSeat, _Backend]], upgrade: str) -> list[str]:
    p = site.prefix
    lines = [
        "server {",
        f"    listen {site.listen_https} ssl http2;",
        f"    server_name {site.server_name};",
        "    server_tokens off;",
        f"    ssl_certificate {site.tls_certificate};",
        f"    ssl_certificate_key {site.tls_certificate_key};",
        "    ssl_protocols TLSv1.2 TLSv1.3;",
        f"    ssl_session_cache shared:{p}_tls:10m;",
        "    ssl_session_timeout 1d;",
        '    add_header Strict-Transport-Security "max-age=31536000" always;',
        "",
        "    # Uploads (input images) go to the seat frontends; prompts and the admin to the hub.",
        f"    client_max_body_size {site.max_upload_mb}m;",
        "    # Redirects keep the host and port the browser used (nginx may sit behind a port mapping).",
        "    absolute_redirect off;",
        "",
        "    # Every proxied location below inherits these (the auth location sets its own).",
        "    proxy_http_version 1.1;",
        "    proxy_set_header Host $host;",
        "    proxy_set_header X-Real-IP $remote_addr;",
        "    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "    proxy_set_header X-Forwarded-Proto https;",
        "    # With its port ($host drops it): seat frontends compare it with a request's Origin.",
        "    proxy_set_header X-Forwarded-Host $http_host;",
        "    proxy_set_header Upgrade $http_upgrade;",
        f"    proxy_set_header Connection {upgrade};",
        "    # Seat frontends reach the hub on the internal network; a seat token never comes from outside.",
        '    proxy_set_header X-Comfyume-Seat-Token "";',
        "",
    ]
    if seats:  # the auth locations use variables only seat locations set: nginx rejects them on their own
        lines += [*_auth_locations(site, hub), ""]
    for seat, backend in seats:
        lines += _seat_locations(seat, backend)
    lines += [
        "    # The auth endpoint is for nginx (and seat frontends on the internal network) only.",
        "    location /auth/ {",
        "        return 404;",
        "    }",
        "",
    ]
    if site.static_root is not None:
        lines += [
            "    location /static/ {",
            f"        alias {site.static_root.rstrip('/')}/;",
            "        expires 1h;",
            "        access_log off;",
            "    }",
            "",
        ]
    lines += [
        "    # The hub's WebSockets (instructor dashboard, seat events) stay open for the whole session.",
        "    location /ws/ {",
        *hub.proxy_pass("        "),
        f"        proxy_read_timeout {SEAT_TIMEOUT};",
        f"        proxy_send_timeout {SEAT_TIMEOUT};",
        "        proxy_buffering off;",
        "    }",
        "",
        "    location / {",
        *hub.proxy_pass("        "),
        f"        proxy_read_timeout {HUB_TIMEOUT};",
        "    }",
        "}",
    ]
    return lines


def _auth_locations(site: NginxSite, hub: _Backend) -> list[str]:
    p = site.prefix
    lines = [
        "    # May this browser use this seat? The hub answers 204, 401 (not signed in), 403 (someone else's",
        "    # seat) or 404 (no such seat). Only the headers the hub decides from are sent.",
        "    location = /_comfyume/auth {",
        "        internal;",
        *hub.proxy_pass("        ", "/auth/seat"),
        "        proxy_pass_request_body off;",
        "        proxy_pass_request_headers off;",
        "        proxy_set_header Host $host;",
        '        proxy_set_header Connection "";',
        '        proxy_set_header Content-Length "";',
        "        proxy_set_header X-Original-URI $request_uri;",
        "        proxy_set_header X-Original-Method $request_method;",
        f'        proxy_set_header X-Comfyume-Workshop "{site.workshop}";',
        "        proxy_set_header Cookie $http_cookie;",
        "        proxy_set_header Authorization $http_authorization;",
        "        proxy_set_header X-Real-IP $remote_addr;",
        "        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "        proxy_set_header X-Forwarded-Proto https;",
        f"        proxy_connect_timeout {AUTH_TIMEOUT};",
        f"        proxy_read_timeout {AUTH_TIMEOUT};",
    ]
    if site.auth_cache_seconds:
        lines += [
            # The key is everything the answer depends on except the path inside the seat. The whole Cookie
            # header (not just sessionid) is used because nginx and Django disagree on which of two
            # same-named cookies wins; a key built from exactly what the hub saw cannot be confused.
            f"        proxy_cache {p}_auth;",
            '        proxy_cache_key "$comfyume_seat|$http_authorization|$http_cookie";',
            f"        proxy_cache_valid 204 {site.auth_cache_seconds}s;",
            "        # The hub marks its answers no-store for browsers; nginx decides here, and only 204 is kept.",
            "        proxy_ignore_headers Cache-Control Expires Set-Cookie Vary X-Accel-Expires;",
        ]
    lines += [
        "    }",
        "",
        "    # Not signed in: the hub's sign-in page, then back to where the browser was going.",
        "    location @comfyume_sign_in {",
        "        return 302 /login/?next=$request_uri;",
        "    }",
        "",
        "    # auth_request turns any other answer into 500: give back the hub's 404, else the hub is unreachable.",
        "    location @comfyume_auth_failed {",
        '        if ($comfyume_auth_status = "404") {',
        "            return 404;",
        "        }",
        "        return 502;",
        "    }",
    ]
    return lines


def _seat_locations(seat: NginxSeat, backend: _Backend) -> list[str]:
    label = seat.label
    return [
        f"    location = /{label} {{",
        f"        return 301 /{label}/$is_args$args;",
        "    }",
        f"    location /{label}/ {{",
        f"        set $comfyume_seat {label};",
        "        auth_request /_comfyume/auth;",
        "        auth_request_set $comfyume_auth_status $upstream_status;",
        "        error_page 401 = @comfyume_sign_in;",
        "        error_page 500 = @comfyume_auth_failed;",
        *backend.proxy_pass("        "),
        f"        proxy_read_timeout {SEAT_TIMEOUT};",
        f"        proxy_send_timeout {SEAT_TIMEOUT};",
        "        proxy_buffering off;",
        "    }",
        "",
    ]


def render_main_config(site_file: str, work_dir: str, *, user: str | None = None) -> str:
    """A minimal main ``nginx.conf`` around ``site_file`` that writes only under ``work_dir``.

    For ``nginx -t`` (``render_nginx --check``) and the tests that run a real nginx; production uses the
    image's own main configuration. ``user root`` lets workers read a private temp dir when started as root
    (nginx ignores the directive, with a warning, when it is not).
    """
    _check_path("site_file", site_file)
    _check_path("work_dir", work_dir)
    if user is not None and not LABEL_RE.fullmatch(user):
        raise ValueError(f"user: {user!r} is not a user name.")
    w = work_dir.rstrip("/")
    return "\n".join(
        [
            *([f"user {user};"] if user else []),
            "worker_processes 1;",
            "daemon off;",
            f"pid {w}/nginx.pid;",
            f"error_log {w}/error.log info;",
            "events {",
            "    worker_connections 1024;",
            "}",
            "http {",
            "    default_type application/octet-stream;",
            f"    access_log {w}/access.log;",
            f"    client_body_temp_path {w}/client_body;",
            f"    proxy_temp_path {w}/proxy;",
            f"    fastcgi_temp_path {w}/fastcgi;",
            f"    uwsgi_temp_path {w}/uwsgi;",
            f"    scgi_temp_path {w}/scgi;",
            f"    include {site_file};",
            "}",
            "",
        ]
    )
