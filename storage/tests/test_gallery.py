"""The instructor's outputs gallery, single-file view with byte ranges, and streamed ZIP downloads."""

from __future__ import annotations

import asyncio
import io
import re
import warnings
import zipfile
from collections.abc import AsyncIterable, Iterator, Mapping
from typing import Any, BinaryIO
from unittest import mock

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.handlers.asgi import ASGIHandler
from django.db import connection
from django.test import AsyncRequestFactory
from django.test.utils import CaptureQueriesContext
from django.urls import reverse

from jobs.models import Job
from storage import views
from storage.downloads import CHUNK_SIZE, MISSING_NAME, ArchiveItem, build_archive, parse_single_range
from storage.models import Artifact
from storage.stores import LocalStore, default_store
from tests.launched import CHROMIUM
from workshops.models import Seat

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
MP4 = b"\x00\x00\x00\x18ftypmp42" + bytes(range(255, -1, -1)) * 40


def make_job(seat: Seat) -> Job:
    return Job.objects.create(workshop=seat.workshop, seat=seat, prompt={}, status=Job.Status.SUCCEEDED)


def make_artifact(seat: Seat, filename: str, data: bytes, content_type: str, job: Job | None = None) -> Artifact:
    """An output row and its file, written through the store as the pipeline writes them."""
    job = job or make_job(seat)
    # The pipeline keys files by prompt and a safe name; the recorded filename is what ComfyUI called it.
    key = f"workshops/{seat.workshop.slug}/{seat.label}/{job.prompt_id}/{Artifact.objects.count()}.bin"
    stored = default_store().put(key, [data])
    return Artifact.objects.create(
        job=job,
        key=key,
        filename=filename,
        kind=Artifact.kind_for(content_type),
        size=stored.size,
        sha256=stored.sha256,
        content_type=content_type,
    )


def gallery_url(slug: str = "ws1") -> str:
    return reverse("storage:gallery", args=[slug])


def zip_url(slug: str = "ws1") -> str:
    return reverse("storage:download-zip", args=[slug])


def file_url(artifact: Artifact) -> str:
    return reverse("storage:artifact-file", args=[artifact.pk])


def body(response) -> bytes:
    return response.getvalue()


def tile_ids(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'data-artifact="(\d+)"', html)]


@pytest.fixture
def staff_client(client, personas):
    client.force_login(personas.instructor)
    return client


@pytest.fixture
def outputs(personas):
    """An image of seat A, a video of seat B, and an image in the other workshop that must never show."""
    personas.seat_a.display_name = "Ada Lovelace"
    personas.seat_a.save()
    return {
        "image": make_artifact(personas.seat_a, "ComfyUI_00001_.png", PNG, "image/png"),
        "video": make_artifact(personas.seat_b, "AnimateDiff_00001.mp4", MP4, "video/mp4"),
        "elsewhere": make_artifact(personas.seat_c, "other_workshop.png", b"not yours", "image/png"),
    }


# --- The gallery ---------------------------------------------------------------------------------------


def test_staff_see_every_output_labelled_by_seat_with_image_and_video_tags(staff_client, outputs):
    response = staff_client.get(gallery_url())

    assert response.status_code == 200
    html = response.content.decode()
    image, video = outputs["image"], outputs["video"]
    assert tile_ids(html) == [video.pk, image.pk]  # newest first
    assert re.search(rf'<img src="{file_url(image)}" loading="lazy"', html)
    assert re.search(rf'<video src="{file_url(video)}" controls muted loop playsinline preload="metadata">', html)
    assert "<strong>user001</strong> Ada Lovelace" in html
    assert "<strong>user002</strong>" in html
    assert "other_workshop.png" not in html
    assert 'id="user-tools"' in html  # inside the admin's chrome


def test_gallery_links_downloads_of_the_workshop_and_of_each_seat(staff_client, outputs):
    html = staff_client.get(gallery_url()).content.decode()

    assert f'href="{zip_url()}"' in html
    assert f'href="{zip_url()}?seat=user001"' in html
    assert f'href="{zip_url()}?seat=user002"' in html


@pytest.mark.parametrize("url_name", ["gallery", "download-zip", "artifact-file"])
def test_anonymous_and_participants_are_sent_to_the_admin_login(client, personas, outputs, url_name):
    args = [outputs["image"].pk] if url_name == "artifact-file" else ["ws1"]
    url = reverse(f"storage:{url_name}", args=args)

    anonymous = client.get(url)
    client.force_login(personas.seat_a.participant)
    participant = client.get(url)

    for response in (anonymous, participant):
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login") + "?next=")
        assert not response.streaming
        assert b"ComfyUI_00001_" not in response.content and PNG not in response.content


@pytest.mark.parametrize("url_name", ["gallery", "download-zip", "artifact-file"])
def test_staff_who_may_not_view_artifacts_are_refused(client, personas, outputs, url_name):
    args = [outputs["image"].pk] if url_name == "artifact-file" else ["ws1"]
    url = reverse(f"storage:{url_name}", args=args)
    helper = get_user_model().objects.create_user("helper", is_staff=True)
    client.force_login(helper)

    refused = client.get(url)
    helper.user_permissions.add(Permission.objects.get(codename="view_artifact"))
    client.force_login(get_user_model().objects.get(pk=helper.pk))  # fresh instance: no cached permissions
    allowed = client.get(url)

    assert refused.status_code == 403
    assert allowed.status_code == 200


def test_seat_filter_shows_only_that_seats_outputs(staff_client, personas, outputs):
    second_of_a = make_artifact(personas.seat_a, "ComfyUI_00002_.png", PNG, "image/png")

    only_b = staff_client.get(gallery_url(), {"seat": "user002"})
    only_a = staff_client.get(gallery_url(), {"seat": "user001"})
    unknown = staff_client.get(gallery_url(), {"seat": "user999"})

    assert tile_ids(only_b.content.decode()) == [outputs["video"].pk]
    assert tile_ids(only_a.content.decode()) == [second_of_a.pk, outputs["image"].pk]
    assert f'href="{zip_url()}?seat=user002" download>Download user002' in only_b.content.decode()
    assert unknown.status_code == 404


def test_kind_filter_shows_only_that_kind(staff_client, personas, outputs):
    other = make_artifact(personas.seat_a, "notes.json", b"{}", "application/json")

    videos = staff_client.get(gallery_url(), {"kind": "video"}).content.decode()
    others = staff_client.get(gallery_url(), {"kind": "other"}).content.decode()
    bogus = staff_client.get(gallery_url(), {"kind": "bogus"}).content.decode()

    assert tile_ids(videos) == [outputs["video"].pk]
    assert tile_ids(others) == [other.pk]
    assert f'<a class="media other" href="{file_url(other)}"' in others
    assert len(tile_ids(bogus)) == 3  # an unknown kind filters nothing rather than hiding everything


def test_grouped_by_seat_puts_each_seats_outputs_under_its_heading(staff_client, personas, outputs):
    later_a = make_artifact(personas.seat_a, "ComfyUI_00002_.png", PNG, "image/png")

    html = staff_client.get(gallery_url(), {"by": "seat"}).content.decode()

    assert tile_ids(html) == [later_a.pk, outputs["image"].pk, outputs["video"].pk]
    assert html.count('class="seat-heading"') == 2
    assert html.index(">user001 · Ada Lovelace</h2>") < html.index(">user002</h2>")


def test_gallery_pages_hold_sixty_outputs(staff_client, personas):
    made = [make_artifact(personas.seat_a, f"out_{n}.png", PNG, "image/png").pk for n in range(61)]

    first = staff_client.get(gallery_url()).content.decode()
    second = staff_client.get(gallery_url(), {"page": 2}).content.decode()

    assert tile_ids(first) == made[::-1][:60]
    assert tile_ids(second) == [made[0]]
    assert "Page 1 of 2" in first


def _seed(personas, seats: int, artifacts: int) -> None:
    extra = [Seat.objects.create(workshop=personas.workshop, label=f"user{100 + n}") for n in range(seats - 2)]
    pool = [personas.seat_a, personas.seat_b, *extra]
    jobs = [make_job(seat) for seat in pool]
    for n in range(artifacts):
        kind = ("image/png", "video/mp4", "application/json")[n % 3]
        make_artifact(pool[n % len(pool)], f"out_{n}", b"x", kind, job=jobs[n % len(jobs)])


@pytest.mark.parametrize("params", [{}, {"by": "seat"}, {"projector": "1"}, {"seat": "user001", "kind": "image"}])
def test_gallery_queries_do_not_grow_with_outputs_or_seats(staff_client, personas, params):
    _seed(personas, seats=2, artifacts=5)
    with CaptureQueriesContext(connection) as few:
        small = staff_client.get(gallery_url(), params)
    _seed(personas, seats=12, artifacts=45)
    with CaptureQueriesContext(connection) as many:
        large = staff_client.get(gallery_url(), params)

    assert small.status_code == large.status_code == 200
    assert len(tile_ids(large.content.decode())) > len(tile_ids(small.content.decode()))
    assert len(many.captured_queries) == len(few.captured_queries), [q["sql"] for q in many.captured_queries]


def test_projector_mode_is_a_dark_full_screen_wall_that_refreshes_itself(staff_client, outputs):
    html = staff_client.get(gallery_url(), {"projector": "1", "refresh": "2"}).content.decode()

    assert re.search(r'<body class="[^"]*\bprojector\b', html)
    assert 'id="header"' not in html and 'id="nav-sidebar"' not in html
    assert "autoplay" in html
    assert "setInterval(refresh, 5 * 1000)" in html  # two seconds is clamped: a projector is not a stress test
    assert tile_ids(html) == [outputs["video"].pk, outputs["image"].pk]


def test_projector_fragment_is_only_the_tiles(staff_client, personas, outputs):
    newer = make_artifact(personas.seat_a, "ComfyUI_00002_.png", PNG, "image/png")

    fragment = staff_client.get(gallery_url(), {"projector": "1", "fragment": "1"}).content.decode()

    assert fragment.lstrip().startswith('<div class="tiles" id="gallery-tiles" data-gallery-fragment>')
    assert "<html" not in fragment
    assert tile_ids(fragment) == [newer.pk, outputs["video"].pk, outputs["image"].pk]


def test_plain_gallery_has_no_refresh_script(staff_client, outputs):
    html = staff_client.get(gallery_url()).content.decode()

    assert "setInterval" not in html
    assert 'id="header"' in html


# --- One artifact's bytes ------------------------------------------------------------------------------


def test_artifact_file_serves_the_bytes_inline_with_their_type(staff_client, outputs):
    response = staff_client.get(file_url(outputs["image"]))

    assert response.status_code == 200
    assert body(response) == PNG
    assert response["Content-Type"] == "image/png"
    assert response["Content-Length"] == str(len(PNG))
    assert response["Content-Disposition"] == 'inline; filename="ComfyUI_00001_.png"'
    assert response["Accept-Ranges"] == "bytes"


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [("bytes=10-19", 10, 19), ("bytes=100-", 100, None), ("bytes=-7", -7, None), ("bytes=0-999999", 0, None)],
)
def test_a_range_request_gets_206_with_that_slice(staff_client, outputs, header, first, last):
    video = outputs["video"]
    expected = MP4[first : None if last is None else last + 1]

    response = staff_client.get(file_url(video), headers={"Range": header})

    assert response.status_code == 206
    assert body(response) == expected
    assert response["Content-Length"] == str(len(expected))
    start = first if first >= 0 else len(MP4) + first
    assert response["Content-Range"] == f"bytes {start}-{start + len(expected) - 1}/{len(MP4)}"


def test_a_range_past_the_end_gets_416(staff_client, outputs):
    response = staff_client.get(file_url(outputs["video"]), headers={"Range": f"bytes={len(MP4)}-"})

    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{len(MP4)}"


def test_several_ranges_or_a_stale_if_range_get_the_whole_file(staff_client, outputs):
    url = file_url(outputs["video"])

    several = staff_client.get(url, headers={"Range": "bytes=0-1,5-9"})
    stale = staff_client.get(url, headers={"Range": "bytes=0-1", "If-Range": '"some-older-version"'})

    for response in (several, stale):
        assert response.status_code == 200
        assert body(response) == MP4


def test_a_cached_copy_is_revalidated_by_its_checksum(staff_client, outputs):
    image = outputs["image"]

    response = staff_client.get(file_url(image), headers={"If-None-Match": f'"{image.sha256}"'})

    assert response.status_code == 304


def test_head_answers_the_length_without_the_bytes(staff_client, outputs):
    response = staff_client.head(file_url(outputs["image"]))

    assert response.status_code == 200
    assert response["Content-Length"] == str(len(PNG))
    assert body(response) == b""


def test_a_file_that_could_carry_script_is_downloaded_not_shown(staff_client, personas):
    svg = make_artifact(personas.seat_a, "drawing.svg", b"<svg onload='alert(1)'/>", "image/svg+xml")

    response = staff_client.get(file_url(svg))

    assert response.status_code == 200
    assert response["Content-Type"] == "application/octet-stream"
    assert response["Content-Disposition"].startswith("attachment;")
    assert "sandbox" in response["Content-Security-Policy"]


def test_artifact_missing_from_storage_or_unknown_is_404(staff_client, outputs):
    image = outputs["image"]
    default_store().delete(image.key)

    assert staff_client.get(file_url(image)).status_code == 404
    assert staff_client.get(reverse("storage:artifact-file", args=[image.pk + 1000])).status_code == 404


def test_an_image_is_sent_whole_and_a_video_over_the_limit_streamed(personas, outputs, monkeypatch):
    """Outputs up to ``WHOLE_UP_TO`` go out in one piece from the view's thread (no trip per chunk through the
    event loop), ranges included; bigger ones stream."""
    request = AsyncRequestFactory().get(file_url(outputs["video"]), headers={"Range": "bytes=3-40"})
    request.user = personas.instructor

    small = views.artifact_file(request, outputs["video"].pk)

    assert not small.streaming and small.status_code == 206
    assert small.content == MP4[3:41] and small["Content-Range"] == f"bytes 3-40/{len(MP4)}"

    monkeypatch.setattr(views, "WHOLE_UP_TO", len(MP4) - 1)
    request = AsyncRequestFactory().get(file_url(outputs["video"]))
    request.user = personas.instructor

    big = views.artifact_file(request, outputs["video"].pk)

    assert big.streaming and big["Content-Length"] == str(len(MP4))
    assert collect(big.streaming_content) == MP4


def test_range_over_asgi_streams_asynchronously(personas, outputs, monkeypatch):
    """Under daphne a synchronous body would be read whole into memory by Django before sending. (The test's
    video is small: it is streamed as one larger than ``WHOLE_UP_TO`` is.)"""
    monkeypatch.setattr(views, "WHOLE_UP_TO", 0)
    request = AsyncRequestFactory().get(file_url(outputs["video"]), headers={"Range": "bytes=3-40"})
    request.user = personas.instructor

    response = views.artifact_file(request, outputs["video"].pk)

    assert response.is_async
    assert collect(response.streaming_content) == MP4[3:41]


# --- ZIP downloads -------------------------------------------------------------------------------------


def read_zip(response) -> tuple[bytes, zipfile.ZipFile]:
    data = body(response)
    return data, zipfile.ZipFile(io.BytesIO(data))


def test_workshop_zip_holds_every_output_by_seat_with_an_exact_length(staff_client, outputs):
    image, video = outputs["image"], outputs["video"]

    response = staff_client.get(zip_url())
    data, archive = read_zip(response)

    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"] == 'attachment; filename="ws1-outputs.zip"'
    assert int(response["Content-Length"]) == len(data)
    assert archive.testzip() is None
    assert archive.namelist() == [
        f"user001/{image.job_id}-ComfyUI_00001_.png",
        f"user002/{video.job_id}-AnimateDiff_00001.mp4",
    ]
    assert archive.read(archive.namelist()[0]) == PNG
    assert archive.read(archive.namelist()[1]) == MP4
    assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
    assert response["X-Missing-Files"] == "0"


def test_seat_zip_holds_only_that_seat(staff_client, personas, outputs):
    second = make_artifact(personas.seat_b, "ComfyUI_00009_.png", PNG, "image/png")

    response = staff_client.get(zip_url(), {"seat": "user002"})
    data, archive = read_zip(response)

    assert response["Content-Disposition"] == 'attachment; filename="ws1-user002-outputs.zip"'
    assert int(response["Content-Length"]) == len(data)
    assert archive.namelist() == [
        f"user002/{outputs['video'].job_id}-AnimateDiff_00001.mp4",
        f"user002/{second.job_id}-ComfyUI_00009_.png",
    ]
    assert staff_client.get(zip_url(), {"seat": "user999"}).status_code == 404


def test_zip_names_are_unique_and_cannot_leave_the_seat_folder(staff_client, personas):
    job = make_job(personas.seat_a)
    make_artifact(personas.seat_a, "same.png", b"first", "image/png", job=job)
    make_artifact(personas.seat_a, "SAME.png", b"second", "image/png", job=job)
    make_artifact(personas.seat_a, "../../etc/passwd", b"third", "text/plain", job=job)

    _, archive = read_zip(staff_client.get(zip_url()))

    names = archive.namelist()
    assert names[:2] == [f"user001/{job.pk}-same.png", f"user001/{job.pk}-SAME-2.png"]
    assert [archive.read(n) for n in names] == [b"first", b"second", b"third"]
    assert all(n.startswith("user001/") and n.count("/") == 1 for n in names)


def test_a_file_missing_from_storage_is_listed_in_missing_txt(staff_client, outputs):
    image, video = outputs["image"], outputs["video"]
    default_store().delete(image.key)

    response = staff_client.get(zip_url())
    data, archive = read_zip(response)

    assert int(response["Content-Length"]) == len(data)
    assert archive.testzip() is None
    assert archive.namelist() == [f"user002/{video.job_id}-AnimateDiff_00001.mp4", MISSING_NAME]
    assert archive.read(archive.namelist()[0]) == MP4
    report = archive.read(MISSING_NAME).decode()
    assert f"user001/{image.job_id}-ComfyUI_00001_.png\t{image.key}" in report
    assert response["X-Missing-Files"] == "1"


def test_an_empty_workshop_gives_an_empty_valid_zip(staff_client, personas):
    response = staff_client.get(zip_url())
    data, archive = read_zip(response)

    assert int(response["Content-Length"]) == len(data)
    assert archive.namelist() == []


def test_zip_reads_one_file_at_a_time_in_bounded_chunks(tmp_path):
    """Memory stays flat: nothing is read before streaming starts, then each file in CHUNK_SIZE pieces."""
    store = LocalStore(tmp_path)
    payloads = {f"k{n}": bytes([n]) * (CHUNK_SIZE * 2 + 123) for n in range(3)}
    for key, data in payloads.items():
        store.put(key, [data])
    items = [ArchiveItem("user001", n, f"f{n}.mp4", key, len(data)) for n, (key, data) in enumerate(payloads.items())]
    open_files: list[BinaryIO] = []
    real_open = LocalStore.open

    def tracking_open(self: LocalStore, key: str):
        handle = real_open(self, key)
        assert all(h.closed for h in open_files), "a second file was opened before the first was closed"
        open_files.append(handle)
        return handle

    with mock.patch.object(LocalStore, "open", autospec=True, side_effect=tracking_open):
        archive = build_archive(items, store)
        assert open_files == []
        chunks = list(archive)

    assert len(open_files) == 3 and all(h.closed for h in open_files)
    assert max(len(c) for c in chunks) <= CHUNK_SIZE
    assert len(b"".join(chunks)) == len(archive)


def test_zip_over_asgi_streams_asynchronously(personas, outputs):
    request = AsyncRequestFactory().get(zip_url())
    request.user = personas.instructor

    response = views.download_zip(request, "ws1")

    assert response.is_async
    data = collect(response.streaming_content)
    assert int(response["Content-Length"]) == len(data)
    assert zipfile.ZipFile(io.BytesIO(data)).read(f"user002/{outputs['video'].job_id}-AnimateDiff_00001.mp4") == MP4


@pytest.mark.django_db(transaction=True)  # the ASGI handler runs the view in another thread, on its own connection
def test_zip_goes_out_through_the_asgi_handler_chunk_by_chunk(client, personas, outputs):
    """Daphne serves the hub: Django's ASGI handler must receive an async body, or it buffers it whole."""
    client.force_login(personas.instructor)
    session = client.cookies[settings.SESSION_COOKIE_NAME].value

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        messages = call_asgi(zip_url(), cookie=f"{settings.SESSION_COOKIE_NAME}={session}")

    start, *bodies = messages
    assert start["status"] == 200
    data = b"".join(m.get("body", b"") for m in bodies)
    assert dict(start["headers"])[b"Content-Length"] == str(len(data)).encode()
    assert zipfile.ZipFile(io.BytesIO(data)).read(f"user001/{outputs['image'].job_id}-ComfyUI_00001_.png") == PNG
    assert not [w for w in caught if "consume synchronous iterators" in str(w.message)]


def call_asgi(path: str, *, cookie: str) -> list[dict]:
    """One GET through Django's ASGI handler, as daphne would make it; returns the messages it sent."""
    sent: list[dict] = []

    async def run() -> None:
        delivered = False

        async def receive() -> dict:
            nonlocal delivered
            if delivered:  # the handler listens for a disconnect until the response is done
                await asyncio.Event().wait()
            delivered = True
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Mapping[str, Any]) -> None:
            sent.append(dict(message))

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(b"host", b"testserver"), (b"cookie", cookie.encode())],
            "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
        }  # fmt: skip
        await ASGIHandler()(scope, receive, send)

    async_to_sync(run)()
    return sent


def collect(chunks: AsyncIterable[bytes]) -> bytes:
    async def gather() -> bytes:
        return b"".join([chunk async for chunk in chunks])

    return async_to_sync(gather)()


# --- Byte ranges, as a pure function -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-0", (0, 0)),
        ("bytes=5-", (5, 99)),
        ("bytes=-10", (90, 99)),
        ("bytes=-1000", (0, 99)),
        ("bytes=10-5000", (10, 99)),
        (" Bytes = 1-2 ", (1, 2)),
        ("bytes=0-1,4-5", None),  # several ranges: the whole file
        ("bytes=9-3", None),  # invalid: ignored
        ("items=0-5", None),
        ("bytes=a-b", None),
        ("bytes=-", None),
        ("bytes=5", None),
    ],
)
def test_parse_single_range(header, expected):
    assert parse_single_range(header, 100) == expected


@pytest.mark.parametrize(("header", "size"), [("bytes=100-", 100), ("bytes=-0", 100), ("bytes=0-", 0)])
def test_parse_single_range_past_the_end_is_unsatisfiable(header, size):
    from storage.downloads import RangeNotSatisfiable

    with pytest.raises(RangeNotSatisfiable):
        parse_single_range(header, size)


# --- The projector in a real browser -------------------------------------------------------------------


@pytest.fixture(scope="module")
def orm_beside_playwright() -> Iterator[None]:
    """Playwright's sync API runs an event loop in this thread; the ORM calls of these tests are still sync.

    Module-scoped so that it outlasts the test database's teardown, which runs while the browser is open.
    """
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
        yield


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it as root)")
@pytest.mark.django_db(transaction=True)  # the live server answers from its own thread
def test_projector_shows_new_outputs_without_reloading_the_page(
    orm_beside_playwright, live_server, browser, client, personas, outputs
):
    client.force_login(personas.instructor)
    context = browser.new_context()
    context.add_cookies(
        [{"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
          "url": live_server.url}]
    )  # fmt: skip
    page = context.new_page()
    page.goto(f"{live_server.url}{gallery_url()}?projector=1&refresh=5")
    page.evaluate("window.notReloaded = true")
    assert page.locator("[data-artifact]").count() == 2

    newer = make_artifact(personas.seat_b, "ComfyUI_00002_.png", PNG, "image/png")
    page.wait_for_selector(f'[data-artifact="{newer.pk}"]', timeout=15_000)

    ids = page.eval_on_selector_all("[data-artifact]", "tiles => tiles.map(t => Number(t.dataset.artifact))")
    assert ids == [newer.pk, outputs["video"].pk, outputs["image"].pk]
    assert page.evaluate("window.notReloaded") is True
    context.close()


@pytest.mark.django_db
def test_the_workshop_admin_links_to_its_outputs(personas):
    from django.test import Client

    client = Client()
    client.force_login(personas.instructor)
    listing = client.get("/admin/workshops/workshop/").content.decode()
    assert f'href="/admin/outputs/{personas.workshop.slug}/"' in listing
    change = client.get(f"/admin/workshops/workshop/{personas.workshop.pk}/change/").content.decode()
    assert f'href="/admin/outputs/{personas.workshop.slug}/outputs.zip"' in change and "Download all (ZIP)" in change
