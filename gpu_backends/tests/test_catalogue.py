"""A backend's node catalogue (object_info): stored without reading the old one back, read once per process."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from gpu_backends import services
from gpu_backends.models import GpuBackend, NodeCatalogue


@pytest.fixture
def backend(db) -> GpuBackend:
    services._catalogues.clear()
    return GpuBackend.objects.create(name="gpu-1", kind="comfyui", url="http://127.0.0.1:9", max_concurrency=1)


def test_storing_a_catalogue_creates_it_then_replaces_it_without_reading_it(backend):
    services.store_object_info(backend, {"KSampler": {"input": {}}})
    first = NodeCatalogue.objects.get(backend=backend)

    with CaptureQueriesContext(connection) as queries:
        services.store_object_info(backend, {"SaveImage": {"input": {}}})

    assert NodeCatalogue.objects.get(backend=backend).object_info == {"SaveImage": {"input": {}}}
    assert NodeCatalogue.objects.filter(backend=backend).count() == 1
    assert NodeCatalogue.objects.get(backend=backend).fetched_at >= first.fetched_at
    # Half a megabyte of JSON is not read back (and parsed) only to be overwritten.
    assert not any(q["sql"].lstrip().upper().startswith("SELECT") for q in queries.captured_queries)


def test_a_class_submitting_at_once_reads_a_new_backend_once(backend, monkeypatch):
    """A never-read backend: the first submit of this process asks it; the others, arriving meanwhile, wait for
    that answer instead of each asking (and storing) the whole catalogue again."""
    asked = []

    def refresh(target: GpuBackend) -> dict:
        asked.append(target.pk)
        time.sleep(0.2)  # the backend takes its time to answer
        info: dict[str, Any] = {"KSampler": {"input": {}}}
        services._catalogues[target.pk] = (timezone.now(), info)
        return info

    monkeypatch.setattr(services, "refresh_object_info", refresh)
    answers: list = []
    threads = [threading.Thread(target=lambda: answers.append(services.object_info_for(backend))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert asked == [backend.pk]
    assert answers == [{"KSampler": {"input": {}}}] * 8


def test_a_backend_that_does_not_answer_is_asked_again_by_the_next_submit(backend, monkeypatch):
    calls = []

    def refresh(target: GpuBackend) -> dict:
        calls.append(target.pk)
        raise services.BackendError("connection refused")

    monkeypatch.setattr(services, "refresh_object_info", refresh)

    assert services.object_info_for(backend) is None
    assert services.object_info_for(backend) is None
    assert calls == [backend.pk, backend.pk]
