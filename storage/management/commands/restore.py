"""``manage.py restore BACKUP_ID [--source URL] [--dry-run] [--quiet]``. See docs/BACKUP.md."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from storage import backup
from storage.backup_manifest import BackupError, human_size
from storage.backup_restore import EMPTY_MEANS, RestorePlan, next_steps, restore_backup
from storage.stores import StorageError


class Command(BaseCommand):
    help = (
        "Restore a backup onto an empty installation: verifies it first, migrates, writes seat files and outputs, "
        f"loads the database. {EMPTY_MEANS}"
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("backup_id", help="as `manage.py backup --list` shows it, e.g. 20250301T020000Z")
        parser.add_argument("--source", help="file:///path or s3://bucket/prefix (default: COMFYUME_BACKUP_URL)")
        parser.add_argument("--dry-run", action="store_true", help="verify and list what would be done; change nothing")
        parser.add_argument("--quiet", action="store_true", help="no progress on stderr")

    def handle(self, *args, backup_id: str, source: str | None, dry_run: bool, quiet: bool, **options) -> None:
        try:
            origin = backup.destination_from(source)
            plan = restore_backup(origin, backup_id, dry_run=dry_run, stream=None if quiet else self.stderr)
        except (BackupError, StorageError) as exc:
            raise CommandError(str(exc)) from exc
        self._report(plan, origin.url, dry_run=dry_run)
        if plan.missing_references:
            listed = "\n".join(f"  - {missing}" for missing in plan.missing_references)
            raise CommandError(
                f"Restored, but {len(plan.missing_references)} outputs the backup kept by reference are missing or "
                f"changed in the object store (their gallery entries will not open):\n{listed}"
            )

    def _report(self, plan: RestorePlan, origin: str, *, dry_run: bool) -> None:
        m = plan.manifest
        write = self.stdout.write

        def did(would: str, done: str) -> str:
            return would if dry_run else done

        commit = m.versions.get("commit") or "unknown"
        write(f"Backup {m.backup_id} from {origin} (made {m.created_at}, commit {commit}): verified.")
        write(f"{did('Would apply', 'Applied')} {plan.pending_migrations} migrations.")
        present = f"; {plan.seat_files_present} already there" if plan.seat_files_present else ""
        size = human_size(sum(e.size for e in plan.seat_files))
        where = settings.SEAT_FRONTENDS["DATA_DIR"]
        write(f"{did('Would write', 'Wrote')} {len(plan.seat_files)} seat files ({size}) under {where}{present}.")
        present = f"; {plan.objects_present} already there" if plan.objects_present else ""
        write(
            f"{did('Would copy', 'Copied')} {len(plan.objects)} outputs and uploads "
            f"({human_size(sum(e.size for e in plan.objects))}) into the object store{present}."
        )
        counts = ", ".join(f"{count} {label}" for label, count in sorted(m.counts.items()) if count)
        write(f"{did('Would load', 'Loaded')} {m.rows} database rows ({counts or 'none'}).")
        if plan.references:
            found = "" if dry_run else f": {len(plan.references) - len(plan.missing_references)} intact"
            write(f"{did('Would check', 'Checked')} {len(plan.references)} outputs kept by reference in R2{found}.")
        for warning in plan.warnings:
            self.stderr.write(f"warning: {warning}")
        if dry_run:
            write("Dry run: nothing was changed.")
            return
        write("\nRestored. Next:")
        for number, step in enumerate(next_steps(plan), start=1):
            write(f"  {number}. {step}")
