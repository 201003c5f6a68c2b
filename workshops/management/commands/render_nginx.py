"""``manage.py render_nginx``: the nginx site for one workshop, from the database and settings.

The rendering itself is :func:`workshops.nginx.render_nginx`; this command gathers the facts (which
workshop, which seats at which addresses, host name, certificates) and, with ``--check``, has nginx itself
validate the result before anything is written.
"""

from __future__ import annotations

import ipaddress
import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from workshops.models import Seat, Workshop
from workshops.nginx import NginxSeat, NginxSite, render_main_config, render_nginx

DEFAULT_HUB = "web:8000"
DEFAULT_ACME_WEBROOT = "/var/www/certbot"
# Docker's embedded DNS server: how nginx in a container finds seat containers by name.
DOCKER_DNS = "127.0.0.11"
NGINX_CANDIDATES = ("/usr/sbin/nginx",)
CHECK_TIMEOUT = 60  # seconds; nginx -t on 500 seats takes well under one


class Command(BaseCommand):
    help = (
        "Render the nginx site (TLS, /userNNN/ per seat behind auth_request, the hub for the rest) for one "
        "workshop; print it or write it with --output. --check validates it with nginx -t first."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--workshop", help="Workshop slug (default: the only workshop not archived)")
        parser.add_argument("--server-name", help="Public host name (default: the host of COMFYUME_PUBLIC_URL)")
        parser.add_argument("--output", type=Path, help="Write the site file here (default: standard output)")
        parser.add_argument("--check", action="store_true", help="Validate the rendered file with nginx -t")
        parser.add_argument("--hub", default=DEFAULT_HUB, help=f"host:port where nginx reaches the hub ({DEFAULT_HUB})")
        parser.add_argument("--tls-cert", help="Default: /etc/letsencrypt/live/<server name>/fullchain.pem")
        parser.add_argument("--tls-key", help="Default: /etc/letsencrypt/live/<server name>/privkey.pem")
        parser.add_argument(
            "--acme-webroot",
            default=DEFAULT_ACME_WEBROOT,
            help=f"certbot's webroot, served for HTTP-01 challenges ({DEFAULT_ACME_WEBROOT}; '' for none)",
        )
        parser.add_argument(
            "--static-root", help="Serve /static/ from here (default: STATIC_ROOT; '' to let the hub serve it)"
        )
        parser.add_argument(
            "--resolver",
            help=f"DNS server for seat and hub names, looked up per request (default: {DOCKER_DNS} with the "
            "docker seat driver, none otherwise; '' for none)",
        )
        parser.add_argument("--nginx", help="The nginx binary for --check (default: /usr/sbin/nginx or PATH)")
        parser.add_argument("--listen-http", type=int, default=80, help="Port of the plain HTTP server (80)")
        parser.add_argument("--listen-https", type=int, default=443, help="Port of the TLS server (443)")
        parser.add_argument(
            "--auth-cache-dir",
            default="/var/cache/nginx/comfyume-auth",
            help="Where nginx caches seat-check answers (its parent must exist)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        workshop = self._workshop(options["workshop"])
        seats, skipped = seat_routes(workshop)
        try:
            site = self._site(workshop, seats, options)
        except ValueError as exc:
            raise CommandError(f"Cannot render the nginx site: {exc}") from exc
        text = render_nginx(site)
        output: Path | None = options["output"]
        # With the site on standard output, everything else goes to standard error to keep it clean.
        notes = self.stdout if output else self.stderr
        if skipped:
            self.stderr.write(
                self.style.WARNING(
                    f"{len(skipped)} seat(s) of {workshop.slug} have no frontend address and get no route: "
                    f"{', '.join(skipped)}. Start their frontends, then render again."
                )
            )
        if options["check"]:
            substitutions = check_site(site, find_nginx(options["nginx"]))
            message = f"nginx -t: the site for {workshop.slug} is valid"
            if substitutions:
                message += " (checked with " + "; ".join(substitutions) + ")"
            notes.write(self.style.SUCCESS(message + "."))
        if output is None:
            self.stdout.write(text, ending="")
            return
        write_atomically(output, text)
        notes.write(
            self.style.SUCCESS(
                f"Wrote {output}: {len(seats)} seat route(s) of {workshop.slug} for https://{site.server_name}/"
            )
        )

    def _workshop(self, slug: str | None) -> Workshop:
        if slug:
            workshop = Workshop.objects.filter(slug=slug).first()
            if workshop is None:
                raise CommandError(f"No workshop called {slug!r}.")
            return workshop
        open_ones = list(Workshop.objects.filter(archived_at=None).order_by("slug"))
        if not open_ones:
            raise CommandError("No workshop that is not archived; create one first (manage.py create_workshop).")
        if len(open_ones) > 1:
            # Seat labels repeat across workshops, so one host name serves one workshop.
            slugs = ", ".join(w.slug for w in open_ones)
            raise CommandError(f"Several workshops are not archived ({slugs}); choose one with --workshop.")
        return open_ones[0]

    def _site(self, workshop: Workshop, seats: list[NginxSeat], options: dict[str, Any]) -> NginxSite:
        server_name = options["server_name"] or urlsplit(settings.PUBLIC_URL).hostname or ""
        live = f"/etc/letsencrypt/live/{server_name}"
        static_root = options["static_root"]
        if static_root is None:
            static_root = str(settings.STATIC_ROOT)
        resolver = options["resolver"]
        if resolver is None:
            resolver = DOCKER_DNS if settings.SEAT_FRONTENDS["DRIVER"] == "docker" else ""
        return NginxSite(
            server_name=server_name,
            workshop=workshop.slug,
            hub=options["hub"],
            seats=seats,
            tls_certificate=options["tls_cert"] or f"{live}/fullchain.pem",
            tls_certificate_key=options["tls_key"] or f"{live}/privkey.pem",
            max_upload_mb=int(settings.SEAT_FRONTENDS["MAX_UPLOAD_MB"]),
            static_root=static_root or None,
            acme_webroot=options["acme_webroot"] or None,
            # The seat frontends' own cache of the same answers; a fraction of a second still caches.
            auth_cache_seconds=math.ceil(settings.SEAT_FRONTENDS.get("AUTH_CACHE_SECONDS", 5)),
            resolver=resolver or None,
            listen_http=options["listen_http"],
            listen_https=options["listen_https"],
            auth_cache_dir=options["auth_cache_dir"],
        )


def seat_address(seat: Seat) -> str | None:
    """Where nginx reaches the seat's frontend: the address the supervisor recorded, else where the configured
    driver puts it (a container name for docker, the allocated port for the process driver), else None."""
    frontend = getattr(seat, "frontend", None)  # the reverse one-to-one raises AttributeError when absent
    if frontend is not None and frontend.address:
        return str(frontend.address)
    conf = settings.SEAT_FRONTENDS
    if conf["DRIVER"] == "docker":
        from workshops.frontends import frontend_name
        from workshops.provisioning.docker import SEAT_PORT

        return f"{frontend_name(seat)}:{SEAT_PORT}"
    if conf["DRIVER"] == "process" and frontend is not None and frontend.port:
        return f"{conf['BIND_HOST']}:{frontend.port}"
    return None


def seat_routes(workshop: Workshop) -> tuple[list[NginxSeat], list[str]]:
    """The workshop's seats with an address, and the labels of those without one."""
    routes, skipped = [], []
    for seat in Seat.objects.filter(workshop=workshop).select_related("workshop", "frontend").order_by("label"):
        address = seat_address(seat)
        if address is None:
            skipped.append(seat.label)
            continue
        try:
            routes.append(NginxSeat(label=seat.label, address=address))
        except ValueError as exc:
            raise CommandError(f"Seat {seat}: {exc}") from exc
    return routes, skipped


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step, so an nginx reloading meanwhile never reads half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.tmp")
    temp.write_text(text)
    os.replace(temp, path)


# --- nginx -t ----------------------------------------------------------------------------------------


def find_nginx(explicit: str | None = None) -> str:
    """The nginx binary: ``explicit``, Debian's /usr/sbin/nginx, or the first on PATH."""
    candidates = [explicit] if explicit else [*NGINX_CANDIDATES, shutil.which("nginx")]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    looked = explicit or ", ".join([*NGINX_CANDIDATES, "nginx on PATH"])
    raise CommandError(
        f"--check needs nginx, which is not installed here (looked for {looked}). Install it (apt-get install "
        "nginx), pass --nginx PATH, or run the check where nginx runs."
    )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _local_address(address: str) -> str:
    host, _, port = address.rpartition(":")
    return address if _is_ip(host) else f"127.0.0.1:{port}"


def _readable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.R_OK)


def check_site(site: NginxSite, nginx: str) -> list[str]:
    """Run ``nginx -t`` on the site inside a throwaway main configuration; raise CommandError when it fails.

    The check runs wherever the command runs, which is often not where nginx serves the site, so what only
    exists there is replaced, and the returned list says what: host names (nginx resolves ``upstream``
    names when it loads the file; Docker names resolve only on Docker's network), certificates not readable
    here (before certbot has run), and the auth cache directory (nginx creates it where it runs).
    """
    substitutions: list[str] = []
    with tempfile.TemporaryDirectory(prefix="comfyume-nginx-") as work:
        changes: dict[str, Any] = {"auth_cache_dir": f"{work}/auth-cache"}
        named = [seat.label for seat in site.seats if seat.address != _local_address(seat.address)]
        if named:
            changes["seats"] = [replace(seat, address=_local_address(seat.address)) for seat in site.seats]
            substitutions.append(f"127.0.0.1 for the host names of {len(named)} seat(s)")
        if _local_address(site.hub) != site.hub:
            changes["hub"] = _local_address(site.hub)
            substitutions.append(f"127.0.0.1 for the hub's host name in {site.hub}")
        if not (_readable(site.tls_certificate) and _readable(site.tls_certificate_key)):
            cert, key = write_self_signed_certificate(Path(work), site.server_name)
            changes["tls_certificate"], changes["tls_certificate_key"] = str(cert), str(key)
            substitutions.append(f"a throwaway certificate: {site.tls_certificate} is not readable here")
        site_file = Path(work, "site.conf")
        site_file.write_text(render_nginx(replace(site, **changes)))
        main_file = Path(work, "nginx.conf")
        main_file.write_text(render_main_config(str(site_file), work, user="root" if os.geteuid() == 0 else None))
        result = run_nginx_test(nginx, main_file, Path(work))
    if result.returncode != 0:
        raise CommandError(f"nginx -t rejected the site:\n{result.stdout}{result.stderr}".rstrip())
    return substitutions


def run_nginx_test(nginx: str, main_file: Path, work_dir: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` with its prefix and early error log inside ``work_dir`` (no system path is touched)."""
    return subprocess.run(
        [nginx, "-t", "-q", "-p", str(work_dir), "-e", str(work_dir / "error.log"), "-c", str(main_file)],
        capture_output=True,
        text=True,
        timeout=CHECK_TIMEOUT,
        check=False,
    )


def write_self_signed_certificate(directory: Path, hostname: str, days: int = 2) -> tuple[Path, Path]:
    """A self-signed certificate for ``hostname`` and 127.0.0.1 (``cert.pem``, ``key.pem`` in ``directory``).

    Uses the ``cryptography`` package when it is installed (daphne brings it), else the openssl command.
    """
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key_path), "-out", str(cert_path), "-days", str(days), "-subj", f"/CN={hostname}",
             "-addext", f"subjectAltName=DNS:{hostname},IP:127.0.0.1"],
            capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        # A CA so a client can trust it directly (requests' verify=cert.pem).
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    key_path.chmod(0o600)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
