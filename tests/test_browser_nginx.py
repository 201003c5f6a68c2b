"""Production's path in a real browser: the platform with seats under ``/userNNN/``, behind the nginx config
``render_nginx`` writes (TLS, auth_request, WebSocket upgrade), a participant queueing from their ComfyUI."""

from __future__ import annotations

import json
import re
import time

import pytest

from tests.launched import ARTIFACTS, CHROMIUM, free_port, launch, run_until_image, wait_for_comfyui
from tests.real_nginx import RealNginx, require_nginx

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)"),
]


@pytest.fixture(scope="module")
def behind_nginx(tmp_path_factory):
    from workshops.management.commands.render_nginx import write_self_signed_certificate

    require_nginx()
    work = tmp_path_factory.mktemp("nginx-e2e")
    https, http = free_port(), free_port()
    public = f"https://127.0.0.1:{https}"
    platform = launch(
        work,
        seats=2,
        COMFYUME_SEAT_ROUTING="path",
        COMFYUME_PUBLIC_URL=public,
        CSRF_TRUSTED_ORIGINS=public,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = platform.manage("seat_frontends", "status", "--workshop", "demo").stdout
            if len(re.findall(r"^user\d+\s+running ", status, re.MULTILINE)) == 2:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"seat frontends did not start:\n{status}")
        cert, key = write_self_signed_certificate(work, "localhost")
        site = work / "site.conf"
        rendered = platform.manage(
            "render_nginx", "--workshop", "demo", "--server-name", "localhost", "--hub", f"127.0.0.1:{platform.port}",
            "--tls-cert", str(cert), "--tls-key", str(key), "--acme-webroot", "", "--static-root", "",
            "--listen-http", str(http), "--listen-https", str(https), "--auth-cache-dir", str(work / "auth-cache"),
            "--output", str(site), "--check",
        )  # fmt: skip
        assert rendered.returncode == 0, rendered.stderr
        assert "is valid" in rendered.stdout and "2 seat route(s)" in rendered.stdout
        nginx = RealNginx(work / "nginx").write(site.read_text()).start(https)
    except BaseException:
        platform.stop()
        raise
    yield platform, public
    nginx.stop()
    platform.stop()


def test_participant_queues_from_comfyui_under_their_path(behind_nginx, browser):
    platform, public = behind_nginx
    seats = json.loads((platform.data_dir / "demo_credentials.json").read_text())
    assert seats[0]["join_url"].startswith(f"{public}/join/")
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1300, "height": 850})
    page = context.new_page()
    failures: list[str] = []
    page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 500 else None)
    page.goto(seats[0]["join_url"])
    wait_for_comfyui(page)
    assert page.url == f"{public}/user001/"
    # Saving goes through nginx with the %2F of the userdata path intact.
    saved = page.evaluate(
        """async () => {
            const api = window.comfyAPI.api.api;
            const res = await api.storeUserData('workflows/through nginx.json', '{}', {overwrite: true});
            return [res.status, (await api.listUserDataFullInfo('workflows')).map(f => f.path)];
        }"""
    )
    assert saved[0] == 200 and "through nginx.json" in saved[1]
    seconds = run_until_image(page)
    print(f"\nBENCH nginx_job_s {seconds:.2f} s (Run to the image: processes behind Debian's nginx)")
    page.screenshot(path=str(ARTIFACTS / "participant-comfyui-behind-nginx.png"))
    assert not failures
    # The same browser cannot open the other seat.
    response = page.goto(f"{public}/user002/")
    assert response.status == 403
    context.close()


def test_an_anonymous_visit_is_sent_to_sign_in_and_back(behind_nginx, browser):
    platform, public = behind_nginx
    seats = json.loads((platform.data_dir / "demo_credentials.json").read_text())
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    page.goto(f"{public}/user002/")
    assert page.url.startswith(f"{public}/login/?next=/user002/")
    page.fill("#id_username", seats[1]["username"])
    page.fill("#id_password", seats[1]["password"])
    page.click("button[type=submit]")
    wait_for_comfyui(page)
    assert page.url == f"{public}/user002/"
    context.close()
