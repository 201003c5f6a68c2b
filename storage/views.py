"""Staff views of a workshop's outputs: the gallery (and its projector mode), one file, and ZIP downloads.

Every view here needs an active staff account that may view artifacts in the admin; participants see their
own outputs through the hub's ``/view`` instead (jobs/api.py).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

from asgiref.sync import sync_to_async
from django.contrib import admin
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.core.paginator import Paginator
from django.db.models import Count, QuerySet, Sum
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
    StreamingHttpResponse,
)
from django.shortcuts import get_object_or_404, render
from django.utils.cache import get_conditional_response
from django.utils.http import content_disposition_header
from django.views.decorators.http import require_safe

from workshops.models import Seat, Workshop
from workshops.seat_frontend.media import serving

from .downloads import ArchiveItem, FileChunks, RangeNotSatisfiable, build_archive, parse_single_range
from .models import Artifact
from .stores import StorageError, default_store

log = logging.getLogger(__name__)

GALLERY_PAGE_SIZE = 60
# An output up to this size is read and sent whole; a larger one (a video, a ZIP) is streamed in chunks.
WHOLE_UP_TO = 4 * 1024 * 1024
PROJECTOR_REFRESH_SECONDS = 30
TILE_FIELDS = (
    "id", "filename", "kind", "content_type", "size", "created_at",
    "job__id", "job__seat__id", "job__seat__label", "job__seat__display_name",
)  # fmt: skip


def _check_may_view_outputs(request: HttpRequest) -> None:
    """Staff who may not view artifacts in the admin may not see them here either."""
    if not request.user.has_perm("storage.view_artifact"):
        raise PermissionDenied


def _get_workshop_for_staff(request: HttpRequest, slug: str) -> Workshop:
    _check_may_view_outputs(request)
    return get_object_or_404(Workshop, slug=slug)


def _get_artifact_for_staff(request: HttpRequest, artifact_id: int) -> Artifact:
    _check_may_view_outputs(request)
    return get_object_or_404(Artifact, pk=artifact_id)


def _next_or_none(chunks: Iterator[bytes]) -> bytes | None:
    return next(chunks, None)


async def _in_worker_thread(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """Hand a blocking iterator's chunks to the ASGI server one at a time.

    Django's ASGI handler would otherwise read a synchronous iterator to the end into a list before sending
    anything (django.http.response.StreamingHttpResponse.__aiter__): a 5 GB ZIP in memory. Each chunk is read
    in a pool thread (thread_sensitive=False) so a long download never holds the one thread that runs every
    synchronous view.
    """
    next_chunk = sync_to_async(_next_or_none, thread_sensitive=False)
    try:
        while (chunk := await next_chunk(chunks)) is not None:
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            await sync_to_async(close, thread_sensitive=False)()


def _streamed(
    request: HttpRequest, chunks: Iterator[bytes], *, length: int, content_type: str, status: int = 200
) -> StreamingHttpResponse:
    """A response that streams ``chunks`` (exactly ``length`` bytes) the way the running server wants them."""
    if request.method == "HEAD":
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
        body: Iterator[bytes] | AsyncIterator[bytes] = iter(())
    elif isinstance(request, ASGIRequest):
        body = _in_worker_thread(chunks)
    else:
        body = chunks
    response = StreamingHttpResponse(body, content_type=content_type, status=status)
    response["Content-Length"] = str(length)
    return response


@staff_member_required
@require_safe
def gallery(request: HttpRequest, slug: str) -> HttpResponse:
    """Every output of the workshop, newest first, labelled by seat; ``?projector=1`` for the big screen.

    Filters: ``?seat=<label>``, ``?kind=image|video|other``, ``?by=seat`` (grouped by seat, outside projector
    mode). ``?fragment=1`` renders only the tiles, which the projector page fetches to add new outputs
    without reloading (so playing videos keep playing). The number of queries does not depend on the number
    of outputs or seats.
    """
    workshop = _get_workshop_for_staff(request, slug)
    seats = list(
        workshop.seats.annotate(outputs=Count("jobs__artifacts"), output_bytes=Sum("jobs__artifacts__size")).order_by(
            "label"
        )
    )
    seat_label = request.GET.get("seat", "")
    seat = next((s for s in seats if s.label == seat_label), None)
    if seat_label and seat is None:
        raise Http404("No such seat in this workshop.")
    kind = request.GET.get("kind", "")
    if kind not in Artifact.Kind.values:
        kind = ""
    projector = request.GET.get("projector") == "1"
    by_seat = request.GET.get("by") == "seat" and not projector

    artifacts = (
        Artifact.objects.filter(job__workshop=workshop)
        .select_related("job__seat")
        # Job.prompt is the whole submitted workflow (often tens of kB); a page of tiles needs none of it.
        .only(*TILE_FIELDS)
    )
    if seat is not None:
        artifacts = artifacts.filter(job__seat=seat)
    if kind:
        artifacts = artifacts.filter(kind=kind)
    ordering = ("job__seat__label", "-created_at", "-id") if by_seat else ("-created_at", "-id")
    page = Paginator(artifacts.order_by(*ordering), GALLERY_PAGE_SIZE).get_page(
        1 if projector else request.GET.get("page")
    )

    context = {
        "workshop": workshop,
        "seat": seat,
        "page_obj": page,
        "projector": projector,
        "refresh_seconds": _refresh_seconds(request) if projector else 0,
        "by_seat": by_seat,
    }
    if request.GET.get("fragment") == "1":
        return render(request, "storage/_gallery_tiles.html", context)
    return render(
        request,
        "storage/gallery.html",
        {
            **admin.site.each_context(request),
            **context,
            "title": f"Outputs of {workshop}",
            "seats": seats,
            "kind": kind,
            "kinds": Artifact.Kind.choices,
            "total_outputs": sum(s.outputs for s in seats),
            "total_bytes": sum(s.output_bytes or 0 for s in seats),
            # The sidebar would squeeze the tiles; the projector page is the whole screen.
            "is_nav_sidebar_enabled": False if projector else admin.site.enable_nav_sidebar,
        },
    )


def _refresh_seconds(request: HttpRequest) -> int:
    """``?refresh=N`` seconds between projector updates (0: never), kept between 5 s and an hour."""
    try:
        seconds = int(request.GET.get("refresh", PROJECTOR_REFRESH_SECONDS))
    except ValueError:
        seconds = PROJECTOR_REFRESH_SECONDS
    return 0 if seconds <= 0 else min(max(seconds, 5), 3600)


@staff_member_required
@require_safe
def artifact_file(request: HttpRequest, artifact_id: int) -> HttpResponseBase:
    """One output's bytes, with single-range support so videos can be scrubbed and start quickly.

    Django's FileResponse ignores ``Range``; Safari will not play a video without it. One range gets a 206,
    several get the whole file (allowed by RFC 9110, and no browser asks several of a video), a range past
    the end gets 416. The ETag is the content's SHA-256, so a projector refresh reuses cached files.
    """
    return artifact_response(request, _get_artifact_for_staff(request, artifact_id))


def artifact_response(request: HttpRequest, artifact: Artifact, *, download: bool = False) -> HttpResponseBase:
    """Stream one artifact (range, ETag, safe content types) to whoever the caller has already let see it:
    the instructor's gallery here, a participant's own outputs in the hub API and on their outputs page.
    ``download`` sends it as an attachment under its file name, whatever its type."""
    etag = f'"{artifact.sha256}"'
    not_modified = get_conditional_response(request, etag=etag)
    if not_modified is not None:
        return not_modified

    size = artifact.size
    first, last = 0, size - 1
    status = 200
    range_header = request.headers.get("Range", "")
    # If-Range: a client resuming a download of a different version gets the whole file instead.
    if range_header and request.headers.get("If-Range", etag) == etag:
        try:
            wanted = parse_single_range(range_header, size)
        except RangeNotSatisfiable:
            unsatisfiable = HttpResponse(status=416)
            unsatisfiable["Content-Range"] = f"bytes */{size}"
            return unsatisfiable
        if wanted is not None:
            (first, last), status = wanted, 206

    # Shown inline on the admin's origin only when it is an image, video or audio type (the seats' rule, see
    # workshops/seat_frontend/media.py). Anything else (SVG, HTML, PDF, text a custom node wrote) could carry
    # script that would run with the instructor's admin session, so it is sent as an attachment instead.
    rule = serving(artifact.filename or "output", declared=artifact.content_type)
    store = default_store()
    try:
        presigned = store.presigned_get(
            artifact.key,
            filename=None if rule.inline and not download else artifact.filename,
            content_type=rule.content_type,
        )
    except StorageError as exc:
        log.warning("No presigned URL for %s: %s", artifact.key, exc)
        presigned = None
    if presigned is not None:
        # Kept in R2: the browser fetches it there (ranges, video seeking and all), not through the hub.
        redirect = HttpResponseRedirect(presigned)
        redirect["Cache-Control"] = "private, max-age=300"
        return redirect
    try:
        handle = store.open(artifact.key)
    except StorageError:
        raise Http404("The output file is missing from storage.")
    length = max(0, last - first + 1)
    response: HttpResponseBase
    if length <= WHOLE_UP_TO and request.method != "HEAD":
        # An image: sent in one piece from the view's own thread. Streamed, each chunk took a trip to a pool
        # thread and back through the event loop: 20 ms for a 72 KB PNG that ComfyUI's /view serves in 3 ms
        # (docs/BENCHMARKS.md, "A real ComfyUI").
        with handle:
            handle.seek(first)
            response = HttpResponse(handle.read(length), content_type=rule.content_type, status=status)
    else:
        response = _streamed(
            request,
            FileChunks(handle, start=first, length=length),
            length=length,
            content_type=rule.content_type,
            status=status,
        )
    if status == 206:
        response["Content-Range"] = f"bytes {first}-{last}/{size}"
    response["Accept-Ranges"] = "bytes"
    response["ETag"] = etag
    response["Cache-Control"] = "private, max-age=3600"
    # nosniff, inline/attachment and a sandboxing CSP: opened on its own (not inside <img>/<video>), a file may
    # not run script or reach the admin's cookies.
    for name, value in rule.headers.items():
        response[name] = value
    if download:
        response["Content-Disposition"] = content_disposition_header(True, artifact.filename or "output") or ""
    return response


@staff_member_required
@require_safe
def download_zip(request: HttpRequest, slug: str) -> StreamingHttpResponse:
    """All outputs of the workshop, or of one seat (``?seat=user003``), as one streamed ZIP.

    Entries are ``<seat>/<job number>-<filename>``. Outputs whose file is missing from storage are left out
    and listed in a ``MISSING.txt`` entry (see storage.downloads.build_archive), so the rest still arrive.
    """
    workshop = _get_workshop_for_staff(request, slug)
    artifacts = Artifact.objects.filter(job__workshop=workshop)
    seat_label = request.GET.get("seat", "")
    if seat_label:
        seat = get_object_or_404(Seat, workshop=workshop, label=seat_label)
        artifacts = artifacts.filter(job__seat=seat)
    name = f"{workshop.slug}-{seat_label}-outputs.zip" if seat_label else f"{workshop.slug}-outputs.zip"
    return zip_response(request, artifacts, name)


def zip_response(request: HttpRequest, artifacts: QuerySet[Artifact], name: str) -> StreamingHttpResponse:
    """``artifacts`` as one streamed ZIP called ``name``: ``<seat>/<job number>-<filename>`` entries, missing files
    listed in ``MISSING.txt``; for the gallery's downloads and a participant's own."""
    rows = artifacts.order_by("job__seat__label", "job_id", "id").values_list(
        "job__seat__label", "job_id", "filename", "key", "size"
    )
    archive = build_archive((ArchiveItem(*row) for row in rows.iterator()), default_store())
    response = _streamed(request, iter(archive), length=len(archive), content_type="application/zip")
    response["Content-Disposition"] = content_disposition_header(True, name) or ""
    response["X-Missing-Files"] = str(len(archive.missing))
    # nginx would otherwise spool the whole archive to a temp file before the browser's progress bar moves.
    response["X-Accel-Buffering"] = "no"
    response["Cache-Control"] = "private, no-store"
    return response
