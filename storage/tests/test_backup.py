"""Backup and restore: a full round trip through a real S3-compatible server (moto, tests/s3_server.py) and a
directory, verification, the refusals of restore, retention, failures, outputs by reference and the schedule.

Nothing inside the backup code is mocked: the database is really dumped, wiped (flush) and loaded again;
files really go to the bucket or directory and back.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections
from django.db.migrations.loader import MigrationLoader
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from gpu_backends.models import NodeCatalogue
from jobs.models import Job, JobEvent
from storage import backup
from storage.backup_destinations import FileDestination, backup_id_for, open_destination
from storage.backup_manifest import read_manifest
from storage.backup_restore import occupied
from storage.backup_snapshot import database_snapshot, dumped_models, skipped
from storage.models import Artifact, BackupRun, SeatInput
from storage.retention import Retention, backups_to_keep, prune
from storage.stores import default_store
from tests.s3_server import admin_client, free_port, object_store_settings
from workshops import frontends
from workshops.models import Announcement, AuditEntry, JoinLink, Seat, SeatFrontend, WorkflowTemplate, Workshop
from workshops.provisioning import FrontendStatus, SeatSpec
from workshops.provisioning.process import ProcessDriver

# Every test commits, as a restore on a real server does (and PostgreSQL cannot TRUNCATE, which flush does,
# inside a test's transaction that still has deferred constraint checks pending).
pytestmark = pytest.mark.django_db(transaction=True)

PNG = b"\x89PNG\r\n\x1a\n" + os.urandom(3000)
MP4 = b"\x00\x00\x00\x18ftypmp42" + os.urandom(200_000)
# Fields a restore resets on purpose: where frontends ran on the old server, and their old tokens.
RUNTIME_FIELDS = {
    "workshops.seatfrontend": {"state", "address", "started_at", "restart_done", "reset_done"},
    "workshops.seat": {"token_hash"},
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def seats_dir(settings, tmp_path: Path) -> Path:
    root = tmp_path / "seats"
    settings.SEAT_FRONTENDS = {**settings.SEAT_FRONTENDS, "DATA_DIR": root, "DRIVER": "process"}
    return root


@pytest.fixture(autouse=True)
def backup_conf(settings) -> dict[str, Any]:
    """Backups configured by the test alone (never by the developer's environment); the schedule is off."""
    settings.BACKUP = {"URL": "", "INTERVAL_HOURS": 24, "KEEP_DAILY": 5, "KEEP_WEEKLY": 3, "KEEP_MONTHLY": 3}
    return settings.BACKUP


@pytest.fixture
def s3_dest(settings, s3_server: str, s3_bucket: str) -> str:
    """An s3:// destination on the test server; the platform's own store stays local."""
    settings.OBJECT_STORE = object_store_settings(s3_server, "outputs-unused", KIND="local")
    return f"s3://{s3_bucket}/backups"


def put_artifact(job: Job, name: str, data: bytes, content_type: str) -> Artifact:
    key = f"workshops/{job.workshop.slug}/{job.seat.label}/{job.prompt_id}/{name}"
    stored = default_store().put(key, [data], content_type=content_type)
    return Artifact.objects.create(
        job=job,
        key=key,
        filename=name,
        kind=Artifact.kind_for(content_type),
        size=stored.size,
        sha256=stored.sha256,
        content_type=content_type,
    )


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


@pytest.fixture
def installation(personas, seats_dir: Path, tmp_path: Path):
    """A workshop in use: templates, groups and permissions, jobs with events and outputs, an uploaded image,
    join links, an announcement, audit entries, seat frontends, and files in the seats' directories."""
    User = get_user_model()
    p = personas
    template = WorkflowTemplate.objects.create(name="Invert", workflow={"nodes": [{"id": 1}]})
    p.workshop.templates.add(template)
    p.workshop.default_template = template
    p.workshop.save()
    helpers = Group.objects.create(name="helpers")
    helpers.permissions.add(Permission.objects.get(codename="view_job"))
    p.instructor.groups.add(helpers)
    User.objects.get(username="ws1-user002").user_permissions.add(Permission.objects.get(codename="view_artifact"))
    NodeCatalogue.objects.create(backend=p.backend, object_info={"SaveImage": {}}, fetched_at=timezone.now())
    photo = default_store().put(f"workshops/ws1/user001/inputs/{sha256(PNG)[:32]}/photo.png", [PNG])
    SeatInput.objects.create(
        seat=p.seat_a, name="photo.png", key=photo.key, size=photo.size, sha256=photo.sha256, content_type="image/png"
    )
    done = Job.objects.create(
        workshop=p.workshop,
        seat=p.seat_a,
        prompt={"1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}},
        inputs=[{"name": "photo.png", "key": photo.key, "sha256": photo.sha256, "size": photo.size}],
        status=Job.Status.SUCCEEDED,
        backend=p.backend,
        gpu_seconds=3.5,
    )
    JobEvent.objects.create(job=done, from_status="queued", to_status="dispatching")
    JobEvent.objects.create(job=done, from_status="running", to_status="succeeded")
    put_artifact(done, "out_00001_.png", PNG, "image/png")
    put_artifact(done, "clip.mp4", MP4, "video/mp4")
    other = Job.objects.create(workshop=p.other_workshop, seat=p.seat_c, prompt={}, status=Job.Status.QUEUED)
    put_artifact(other, "other.png", PNG[::-1], "image/png")
    JoinLink.issue(p.seat_b)
    Announcement.objects.create(workshop=p.workshop, message="Break at 11", created_by=p.instructor)
    AuditEntry.objects.create(actor=p.instructor, actor_name="instructor", action="seat.restart", summary="restarted")
    for frontend in frontends.ensure_frontends([p.seat_a, p.seat_b, p.seat_c]):
        SeatFrontend.objects.filter(pk=frontend.pk).update(
            state=SeatFrontend.State.RUNNING, address=f"127.0.0.1:{frontend.port}", started_at=timezone.now()
        )
    p.seat_a.issue_token()
    seat = seats_dir / "ws1" / "user001"
    write(seat / "user" / "workflows" / "my flow.json", json.dumps({"nodes": [1, 2, 3]}).encode())
    write(seat / "user" / "comfy.settings.json", b'{"Comfy.Locale": "de"}')
    write(seat / "input" / "photo.png", PNG)
    write(seat / "state" / "templates.json", b'{"Invert.json": "abc"}')
    write(seat / "frontend.pid", b"12345")  # runtime files: never backed up
    write(seat / "user" / ".comfy.settings.json.tmp-999", b"half")
    outside = tmp_path / "secret.txt"
    outside.write_bytes(b"not the seat's")
    (seat / "user" / "leak.txt").symlink_to(outside)
    write(seats_dir / "ws2" / "user001" / "user" / "workflows" / "w.json", b"{}")
    return p


def table_rows() -> dict[str, Any]:
    """Every row of every backed-up table (runtime fields aside), and the many-to-many links."""
    User = get_user_model()
    rows: dict[str, Any] = {}
    for model in dumped_models():
        label = model._meta.label_lower
        skip = RUNTIME_FIELDS.get(label, set())
        rows[label] = [
            {k: v for k, v in row.items() if k not in skip} for row in model._default_manager.order_by("pk").values()
        ]
    rows["links"] = {
        "backends": sorted(Workshop.backends.through.objects.values_list("workshop_id", "gpubackend_id")),
        "templates": sorted(Workshop.templates.through.objects.values_list("workshop_id", "workflowtemplate_id")),
        "groups": sorted(User.groups.through.objects.values_list("user_id", "group__name")),
        "user_perms": sorted(User.user_permissions.through.objects.values_list("user_id", "permission__codename")),
        "group_perms": sorted(Group.permissions.through.objects.values_list("group__name", "permission__codename")),
    }
    return rows


def tree(root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root`` that a backup keeps."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink() and not skipped(path.name):
            found[path.relative_to(root).as_posix()] = sha256(path.read_bytes())
    return found


def run(*args: str) -> str:
    out = io.StringIO()
    call_command(*args, "--quiet", stdout=out, stderr=io.StringIO())
    return out.getvalue()


def latest_id() -> str:
    return BackupRun.objects.filter(status=BackupRun.Status.SUCCEEDED).order_by("-started_at", "-id")[0].backup_id


def wipe(settings, seats_dir: Path) -> None:
    """A new server: an empty (migrated) database, no seat directories, an empty store."""
    call_command("flush", interactive=False, verbosity=0)
    shutil.rmtree(seats_dir, ignore_errors=True)
    shutil.rmtree(settings.STORAGE_DIR, ignore_errors=True)


class RecordingDriver:
    """A frontend driver that starts nothing and remembers the specs it was given."""

    name = "recording"

    def __init__(self) -> None:
        self.started: list[SeatSpec] = []

    def start(self, spec: SeatSpec) -> FrontendStatus:
        self.started.append(spec)
        return FrontendStatus(running=True, address=f"127.0.0.1:{spec.port}")

    def stop(self, spec: SeatSpec) -> None:
        pass

    def status(self, spec: SeatSpec) -> FrontendStatus:
        return FrontendStatus(running=False)

    def reset(self, spec: SeatSpec) -> None:
        raise AssertionError("a restored seat must not be reset")


# --- the round trip ---------------------------------------------------------------------------------------


def test_round_trip_through_s3_restores_rows_files_outputs_and_sign_ins(settings, installation, seats_dir, s3_dest):
    out = run("backup", "--dest", s3_dest)
    backup_id = latest_id()
    assert f"Backup {backup_id} written to {s3_dest}" in out
    rows, seat_files, objects = table_rows(), tree(seats_dir), tree(settings.STORAGE_DIR)
    assert len(objects) == 4 and "ws1/user001/user/workflows/my flow.json" in seat_files
    manifest = read_manifest(open_destination(s3_dest), backup_id)
    paths = {entry.path for entry in manifest.files}
    assert "seats/ws1/user001/user/comfy.settings.json" in paths
    assert not any(p.endswith(("frontend.pid", "leak.txt")) or ".tmp-" in p for p in paths)
    assert manifest.counts["jobs.job"] == 2 and manifest.references == []
    (leaf,) = [name for app, name in MigrationLoader(None).graph.leaf_nodes() if app == "storage"]
    assert manifest.migrations["storage"][-1] == leaf  # the newest migration, whatever it is called
    assert {e.sha256 for e in manifest.entries("object")} == set(objects.values())

    wipe(settings, seats_dir)
    assert occupied() == {} and not seats_dir.exists()
    out = run("restore", backup_id, "--source", s3_dest)
    assert "Restored. Next:" in out and "fresh token" in out

    assert table_rows() == rows
    # The sequences follow the restored ids (loaddata resets them on PostgreSQL): new rows do not collide.
    assert Job.objects.create(workshop=Workshop.objects.get(slug="ws1"), seat=Seat.objects.first(), prompt={}).pk > 2
    assert get_user_model().objects.create_user("newcomer").pk > 4
    Job.objects.filter(prompt={}, status=Job.Status.QUEUED, workshop__slug="ws1").delete()
    get_user_model().objects.filter(username="newcomer").delete()
    assert tree(seats_dir) == seat_files
    assert tree(settings.STORAGE_DIR) == objects
    store = default_store()
    for artifact in Artifact.objects.all():
        store.verify(artifact.key, size=artifact.size, sha256_hex=artifact.sha256)
    assert Client().login(username="ws1-user001", password="pw-participant")
    assert Client().login(username="instructor", password="pw-instructor")
    assert get_user_model().objects.get(username="instructor").has_perm("jobs.view_job")
    # Seat frontends from the old server are stopped here and hold no token; starting them issues fresh ones.
    assert set(SeatFrontend.objects.values_list("state", flat=True)) == {SeatFrontend.State.STOPPED}
    assert not Seat.objects.exclude(token_hash=None).exists()
    driver = RecordingDriver()
    frontends.Supervisor(driver).reconcile()
    assert sorted(spec.name for spec in driver.started) == [
        "comfyume-seat-ws1-user001",
        "comfyume-seat-ws1-user002",
        "comfyume-seat-ws2-user001",
    ]
    for spec in driver.started:
        seat = Seat.objects.get(workshop__slug=spec.workshop, label=spec.label)
        assert seat.token_hash == hashlib.sha256(spec.env["COMFYUME_SEAT_TOKEN"].encode()).hexdigest()
    spec = next(s for s in driver.started if s.name == "comfyume-seat-ws1-user001")
    restored = ProcessDriver(seats_dir).seat_dir(spec) / "user" / "workflows" / "my flow.json"
    assert json.loads(restored.read_text()) == {"nodes": [1, 2, 3]}


def test_file_destination_backup_lists_verifies_and_restores(settings, installation, seats_dir, tmp_path):
    dest = f"file://{tmp_path}/backups"
    run("backup", "--dest", dest)
    backup_id = latest_id()
    assert (tmp_path / "backups" / backup_id / "manifest.json").is_file()
    assert backup_id in run("backup", "--list", "--dest", dest)
    assert "is intact" in run("backup", "--verify", backup_id, "--dest", dest)
    rows, objects = table_rows(), tree(settings.STORAGE_DIR)
    wipe(settings, seats_dir)
    run("restore", backup_id, "--source", dest)
    assert table_rows() == rows and tree(settings.STORAGE_DIR) == objects
    assert (seats_dir / "ws2" / "user001" / "user" / "workflows" / "w.json").read_bytes() == b"{}"


def test_progress_goes_to_stderr_unless_quiet(installation, tmp_path):
    err = io.StringIO()
    call_command("backup", "--dest", f"file://{tmp_path}/b", stdout=io.StringIO(), stderr=err)
    assert f"backup {latest_id()}: 10/10 files, " in err.getvalue()
    err = io.StringIO()
    call_command("backup", "--verify", latest_id(), "--dest", f"file://{tmp_path}/b", "--quiet", stderr=err)
    assert err.getvalue() == ""


def test_backup_url_setting_is_the_default_destination(backup_conf, installation, tmp_path):
    backup_conf["URL"] = f"file://{tmp_path}/default"
    run("backup")
    assert FileDestination(tmp_path / "default").is_complete(latest_id())
    backup_conf["URL"] = ""
    with pytest.raises(CommandError, match="COMFYUME_BACKUP_URL"):
        run("backup")


# --- verification and the refusals of restore -------------------------------------------------------------


def test_verify_names_a_corrupted_and_a_missing_file_and_restore_refuses(settings, installation, seats_dir, tmp_path):
    dest = f"file://{tmp_path}/backups"
    run("backup", "--dest", dest)
    backup_id = latest_id()
    folder = tmp_path / "backups" / backup_id
    settings_file = folder / "seats" / "ws1" / "user001" / "user" / "comfy.settings.json"
    settings_file.write_bytes(settings_file.read_bytes().replace(b"de", b"fr"))  # same size, other bytes
    video = next(folder.joinpath("objects").rglob("clip.mp4"))
    video.unlink()
    with pytest.raises(CommandError) as verdict:
        run("backup", "--verify", backup_id, "--dest", dest)
    message = str(verdict.value)
    assert "NOT intact (2 problems)" in message
    assert "corrupted: seats/ws1/user001/user/comfy.settings.json" in message
    assert "missing: objects/workshops/ws1/user001/" in message and "clip.mp4" in message

    wipe(settings, seats_dir)
    with pytest.raises(CommandError, match="fails verification; nothing was restored"):
        run("restore", backup_id, "--source", dest)
    assert occupied() == {} and not seats_dir.exists() and not settings.STORAGE_DIR.exists()


def test_restore_refuses_a_non_empty_installation_and_says_what_empty_means(installation, tmp_path):
    dest = f"file://{tmp_path}/backups"
    run("backup", "--dest", dest)
    before = table_rows()
    with pytest.raises(CommandError) as refusal:
        run("restore", latest_id(), "--source", dest)
    message = str(refusal.value)
    assert "not empty" in message and "2 workshops.workshop" in message and "4 auth.user" in message
    assert "no users or groups, workshops" in message
    assert table_rows() == before


def test_restore_refuses_seat_files_that_differ_from_the_backup(settings, installation, seats_dir, tmp_path):
    dest = f"file://{tmp_path}/backups"
    run("backup", "--dest", dest)
    backup_id = latest_id()
    wipe(settings, seats_dir)
    write(seats_dir / "ws1" / "user001" / "user" / "comfy.settings.json", b"{}")
    with pytest.raises(CommandError, match="already there with other content"):
        run("restore", backup_id, "--source", dest)
    assert occupied() == {}


def test_dry_run_lists_the_work_and_changes_nothing(settings, installation, seats_dir, tmp_path):
    dest = f"file://{tmp_path}/backups"
    run("backup", "--dest", dest)
    backup_id = latest_id()
    wipe(settings, seats_dir)
    out = run("restore", backup_id, "--source", dest, "--dry-run")
    assert "Would write 5 seat files" in out and "Would copy 4 outputs" in out
    assert "Would load" in out and "Dry run: nothing was changed." in out
    assert occupied() == {} and not seats_dir.exists() and not settings.STORAGE_DIR.exists()


def test_restore_refuses_a_backup_from_a_newer_schema(settings, installation, seats_dir, tmp_path):
    dest = FileDestination(tmp_path / "backups")
    run("backup", "--dest", dest.url)
    backup_id = latest_id()
    manifest_path = tmp_path / "backups" / backup_id / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["migrations"]["jobs"].append("0099_from_the_future")
    manifest["versions"]["commit"] = "f" * 40
    manifest_path.write_text(json.dumps(manifest))
    wipe(settings, seats_dir)
    with pytest.raises(CommandError, match=r"newer version of ComfyuME \(commit f{40}\).*jobs.0099_from_the_future"):
        run("restore", backup_id, "--source", dest.url)


# --- outputs left in R2 -----------------------------------------------------------------------------------


def test_r2_outputs_are_kept_by_reference_and_restore_reports_a_missing_one(
    settings, r2_store, s3_bucket, seats_dir, personas, tmp_path
):
    job = Job.objects.create(workshop=personas.workshop, seat=personas.seat_a, prompt={}, status=Job.Status.SUCCEEDED)
    kept = put_artifact(job, "kept.png", PNG, "image/png")
    lost = put_artifact(job, "lost.mp4", MP4, "video/mp4")
    dest = f"file://{tmp_path}/backups"
    run("backup", "--dest", dest)
    by_reference = latest_id()
    manifest = read_manifest(open_destination(dest), by_reference)
    assert {r.key for r in manifest.references} == {kept.key, lost.key} and not manifest.entries("object")
    assert BackupRun.objects.get(backup_id=by_reference).reference_count == 2

    run("backup", "--dest", f"{dest}-copies", "--copy-outputs")
    copied = read_manifest(open_destination(f"{dest}-copies"), latest_id())
    assert not copied.references
    assert {e.sha256 for e in copied.entries("object")} == {sha256(PNG), sha256(MP4)}

    wipe(settings, seats_dir)
    admin_client(r2_store.config.endpoint_url).delete_object(Bucket=s3_bucket, Key=lost.key)
    with pytest.raises(CommandError) as report:
        run("restore", by_reference, "--source", dest)
    assert "Restored, but 1 outputs" in str(report.value) and lost.key in str(report.value)
    assert kept.key not in str(report.value)
    assert set(Artifact.objects.values_list("key", flat=True)) == {kept.key, lost.key}


# --- failures, health, admin ------------------------------------------------------------------------------


def test_a_failed_backup_is_recorded_with_its_reason_and_health_reports_it(settings, backup_conf, installation):
    settings.OBJECT_STORE = object_store_settings(f"http://127.0.0.1:{free_port()}", "nowhere", KIND="local")
    backup_conf["URL"] = "s3://nowhere/backups"
    assert backup.health()["status"] == "never"
    with pytest.raises(CommandError, match="Cannot reach the object store"):
        run("backup")
    failed = BackupRun.objects.get()
    assert failed.status == BackupRun.Status.FAILED and failed.finished_at is not None
    assert "Cannot reach the object store" in failed.error and failed.destination == "s3://nowhere/backups"
    state = backup.health()
    assert state["status"] == "failing" and state["last_success"] is None
    assert "Cannot reach the object store" in state["last_failure"]["error"]


def test_health_reports_the_last_success_and_its_age(backup_conf, db, tmp_path):
    backup_conf["URL"] = f"file://{tmp_path}/b"
    now = timezone.now()
    BackupRun.objects.create(
        backup_id="x", status="succeeded", destination="d", started_at=now, heartbeat_at=now, finished_at=now
    )
    state = backup.health(now + timedelta(hours=1))
    assert state["status"] == "ok" and state["age_seconds"] == 3600.0
    assert state["last_success_timestamp"] == now.timestamp() and state["last_failure"] is None
    assert backup.health(now + timedelta(hours=49))["status"] == "stale"
    # Backups by hand (cron) with the schedule off are still watched; no schedule and no backup ever is "off".
    backup_conf["INTERVAL_HOURS"] = 0
    assert backup.health(now)["status"] == "ok" and backup.health(now)["scheduled"] is False
    BackupRun.objects.all().delete()
    assert backup.health(now)["status"] == "off"


def test_the_admin_lists_backup_runs_read_only(client, personas):
    now = timezone.now()
    BackupRun.objects.create(
        status="failed", destination="s3://b/p", started_at=now, heartbeat_at=now, finished_at=now, error="No bucket"
    )
    client.force_login(personas.instructor)
    page = client.get(reverse("admin:storage_backuprun_changelist"))
    assert page.status_code == 200 and b"No bucket" in page.content
    assert client.get(reverse("admin:storage_backuprun_add")).status_code == 403


def test_an_empty_backup_succeeds_but_says_so(db, tmp_path):
    out = io.StringIO()
    call_command("backup", "--dest", f"file://{tmp_path}/b", "--quiet", stdout=out, stderr=out)
    run_row = BackupRun.objects.get()
    assert run_row.status == BackupRun.Status.SUCCEEDED
    assert "this backup is empty" in run_row.warnings and "warning: The database has no rows" in out.getvalue()


def test_a_second_backup_waits_for_the_running_one(installation, tmp_path):
    now = timezone.now()
    BackupRun.objects.create(destination="elsewhere", started_at=now, heartbeat_at=now)
    with pytest.raises(CommandError, match="Another backup is running"):
        run("backup", "--dest", f"file://{tmp_path}/b")
    assert BackupRun.objects.count() == 1


# --- retention --------------------------------------------------------------------------------------------


def test_retention_keeps_the_newest_of_each_day_week_and_month() -> None:
    start = datetime(2025, 1, 1, 2, tzinfo=UTC)
    backups = [(f"d{i:03d}", start + timedelta(days=i)) for i in range(100)]  # daily, 1 Jan … 10 Apr
    backups.append(("late", datetime(2025, 4, 10, 14, tzinfo=UTC)))  # a second one on the last day
    keep = backups_to_keep(backups, Retention(daily=5, weekly=3, monthly=3), protect={"d000"})
    names = {name: moment.date().isoformat() for name, moment in backups}
    assert sorted(names.get(k, k) for k in keep if k != "late") == [
        "2025-01-01",  # protected
        "2025-02-28",  # February's newest
        "2025-03-30",  # newest of ISO week 13
        "2025-03-31",  # March's newest
        "2025-04-06",  # 5th day, and newest of week 14
        "2025-04-07",
        "2025-04-08",
        "2025-04-09",
    ]
    assert "late" in keep and "d099" not in keep  # the earlier backup of 10 April goes


def test_prune_deletes_what_the_policy_drops_but_never_the_new_or_a_running_backup(tmp_path) -> None:
    dest = FileDestination(tmp_path / "b")
    now = datetime(2025, 3, 20, 12, tzinfo=UTC)
    finished = [now - timedelta(days=d) for d in (0, 1, 2, 10, 40)]
    for moment in finished:
        dest.put(backup_id_for(moment), "manifest.json", [b"{}"])
    dest.put(backup_id_for(now - timedelta(hours=1)), "database.jsonl.gz", [b"x"])  # a run in progress
    dest.put(backup_id_for(now - timedelta(days=3)), "database.jsonl.gz", [b"x"])  # debris of a failure
    newest = backup_id_for(finished[0])
    pruned = prune(dest, Retention(daily=2, weekly=0, monthly=0), protect={newest}, now=now)
    remaining = dest.backup_ids()
    assert remaining == sorted([backup_id_for(now - timedelta(hours=1)), newest, backup_id_for(finished[1])])
    assert len(pruned) == 4
    # Even a policy that keeps nothing leaves the newest finished backup.
    assert prune(dest, Retention(daily=0, weekly=0, monthly=0), now=now) == [backup_id_for(finished[1])]
    assert dest.backup_ids() == sorted([backup_id_for(now - timedelta(hours=1)), newest])


def test_prune_only_and_listing_on_s3(s3_dest, s3_server, s3_bucket, installation):
    run("backup", "--dest", s3_dest)
    old = "20200101T000000Z"
    client = admin_client(s3_server)
    for name in ("manifest.json", "database.jsonl.gz", "seats/ws1/user001/a.json"):
        client.put_object(Bucket=s3_bucket, Key=f"backups/{old}/{name}", Body=b"{}")
    assert open_destination(s3_dest).backup_ids() == [old, latest_id()]
    out = run(
        "backup", "--prune-only", "--dest", s3_dest, "--keep-daily", "1", "--keep-weekly", "0", "--keep-monthly", "0"
    )
    assert f"Pruned 1 backup(s) at {s3_dest}: {old}" in out
    assert not client.list_objects_v2(Bucket=s3_bucket, Prefix=f"backups/{old}/").get("Contents")
    assert open_destination(s3_dest).backup_ids() == [latest_id()]


# --- the consistent snapshot ------------------------------------------------------------------------------


def test_the_snapshot_does_not_see_a_write_committed_while_it_is_open() -> None:
    Workshop.objects.create(slug="before", title="Before")

    def write_elsewhere() -> None:
        try:
            Workshop.objects.create(slug="during", title="During")
        finally:
            connections.close_all()

    with database_snapshot():
        assert Workshop.objects.count() == 1
        writer = threading.Thread(target=write_elsewhere)
        writer.start()
        writer.join()
        assert Workshop.objects.count() == 1  # the other connection's commit is not seen
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SHOW transaction_isolation")
                assert cursor.fetchone()[0] == "repeatable read"
    assert Workshop.objects.count() == 2


# --- the schedule -----------------------------------------------------------------------------------------


def test_scheduled_backup_runs_in_the_background_once_when_due(backup_conf, installation, tmp_path):
    backup_conf["URL"] = f"file://{tmp_path}/scheduled"
    now = timezone.now()
    thread = backup.run_scheduled(now)
    assert thread is not None
    assert backup.run_scheduled(now) is None  # another reconciler: the running row is taken
    thread.join(60)
    run_row = BackupRun.objects.get()
    assert run_row.status == BackupRun.Status.SUCCEEDED, run_row.error
    assert run_row.trigger == BackupRun.Trigger.SCHEDULE and run_row.object_count > 4
    assert FileDestination(tmp_path / "scheduled").is_complete(run_row.backup_id)
    assert backup.run_scheduled(now + timedelta(hours=23)) is None  # not due yet
    later = backup.run_scheduled(now + timedelta(hours=25))
    assert later is not None
    later.join(60)
    assert BackupRun.objects.filter(status=BackupRun.Status.SUCCEEDED).count() == 2


def test_schedule_is_off_without_a_destination_or_interval(backup_conf, db, tmp_path):
    assert backup.run_scheduled(timezone.now()) is None
    backup_conf.update(URL=f"file://{tmp_path}/b", INTERVAL_HOURS=0)
    assert backup.run_scheduled(timezone.now()) is None
    assert not BackupRun.objects.exists()


def test_schedule_retries_a_failure_after_an_hour_and_expires_a_dead_run(backup_conf, db, tmp_path):
    backup_conf["URL"] = f"file://{tmp_path}/b"
    conf = backup.backup_settings()
    now = timezone.now()
    failed = BackupRun.objects.create(
        status="failed", destination="d", started_at=now - timedelta(minutes=30), heartbeat_at=now, finished_at=now
    )
    assert not backup._due(now, conf)
    assert backup._due(now + timedelta(minutes=31), conf)
    failed.delete()
    started = now - timedelta(hours=2)
    BackupRun.objects.create(destination="d", started_at=started, heartbeat_at=now - timedelta(minutes=10))
    assert backup.run_scheduled(now) is None  # still alive: it holds the lock
    thread = backup.run_scheduled(now + timedelta(minutes=6))  # 16 minutes without a heartbeat: it died
    assert thread is not None
    thread.join(60)
    dead, fresh = BackupRun.objects.order_by("id")
    assert dead.status == BackupRun.Status.FAILED and dead.error.startswith("Interrupted")
    assert fresh.status == BackupRun.Status.SUCCEEDED
