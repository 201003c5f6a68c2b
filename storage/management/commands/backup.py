"""``manage.py backup [--dest URL] [--copy-outputs] [--keep-daily N …] [--quiet]``, ``--list``, ``--verify ID``,
``--prune-only``. See docs/BACKUP.md."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from storage import backup
from storage.backup_destinations import Destination
from storage.backup_manifest import BackupError, Progress, human_size, list_backups, verify_backup
from storage.models import BackupRun
from storage.retention import Retention, prune
from storage.stores import StorageError


class Command(BaseCommand):
    help = (
        "Back up the database, every seat's files and the outputs to file:///path or s3://bucket/prefix "
        "(default COMFYUME_BACKUP_URL), then apply the retention policy. Also --list, --verify ID, --prune-only."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        conf = backup.backup_settings()
        parser.add_argument("--dest", help="file:///path or s3://bucket/prefix (default: COMFYUME_BACKUP_URL)")
        what = parser.add_mutually_exclusive_group()
        what.add_argument("--list", action="store_true", help="list the backups at the destination")
        what.add_argument("--verify", metavar="BACKUP_ID", help="re-read every file of a backup and check it")
        what.add_argument("--prune-only", action="store_true", help="apply the retention policy, back nothing up")
        parser.add_argument(
            "--copy-outputs", action="store_true", help="with R2 storage, copy the outputs instead of recording them"
        )
        parser.add_argument("--keep-daily", type=int, default=conf.retention.daily, metavar="N")
        parser.add_argument("--keep-weekly", type=int, default=conf.retention.weekly, metavar="N")
        parser.add_argument("--keep-monthly", type=int, default=conf.retention.monthly, metavar="N")
        parser.add_argument("--quiet", action="store_true", help="no progress on stderr")

    def handle(self, *args, **options) -> None:
        try:
            destination = backup.destination_from(options["dest"])
            if options["list"]:
                self._list(destination)
            elif options["verify"]:
                self._verify(destination, options["verify"], quiet=options["quiet"])
            else:
                try:
                    policy = Retention(options["keep_daily"], options["keep_weekly"], options["keep_monthly"])
                except ValueError as exc:
                    raise CommandError(str(exc)) from exc
                if options["prune_only"]:
                    pruned = prune(destination, policy)
                    self.stdout.write(
                        f"Pruned {len(pruned)} backup(s) at {destination.url}: {', '.join(pruned) or '-'}"
                    )
                else:
                    self._backup(destination, policy, copy_outputs=options["copy_outputs"], quiet=options["quiet"])
        except (BackupError, StorageError) as exc:
            raise CommandError(str(exc)) from exc

    def _backup(self, destination: Destination, policy: Retention, *, copy_outputs: bool, quiet: bool) -> None:
        result = backup.perform_backup(
            destination,
            trigger=BackupRun.Trigger.COMMAND,
            copy_outputs=copy_outputs,
            retention=policy,
            stream=None if quiet else self.stderr,
        )
        manifest = result.manifest
        self.stdout.write(
            f"Backup {manifest.backup_id} written to {destination.url}: {len(manifest.files)} files, "
            f"{human_size(manifest.total_bytes)}, {manifest.rows} database rows, "
            f"{len(manifest.references)} outputs by reference."
        )
        for warning in result.run.warnings.splitlines():
            self.stderr.write(f"warning: {warning}")
        if result.pruned:
            self.stdout.write(f"Pruned: {', '.join(result.pruned)}")

    def _list(self, destination: Destination) -> None:
        listed = list_backups(destination)
        if not listed:
            self.stdout.write(f"No backups at {destination.url}.")
            return
        for item in listed:
            if not item.complete:
                self.stdout.write(f"{item.backup_id}  unfinished (no manifest)")
            elif item.manifest is None:
                self.stdout.write(f"{item.backup_id}  unreadable manifest: {item.problem}")
            else:
                m = item.manifest
                self.stdout.write(
                    f"{item.backup_id}  {len(m.files)} files  {human_size(m.total_bytes)}  {m.rows} rows  "
                    f"{len(m.references)} by reference  commit {(m.versions.get('commit') or 'unknown')[:12]}"
                )

    def _verify(self, destination: Destination, backup_id: str, *, quiet: bool) -> None:
        progress = Progress(f"verify {backup_id}", stream=None if quiet else self.stderr)
        result = verify_backup(destination, backup_id, progress=progress)
        if not result.ok:
            listed = "\n".join(f"  - {problem}" for problem in result.problems)
            count = f"{len(result.problems)} problem{'s' if len(result.problems) != 1 else ''}"
            raise CommandError(f"Backup {backup_id} at {destination.url} is NOT intact ({count}):\n{listed}")
        references = len(result.manifest.references) if result.manifest else 0
        self.stdout.write(
            f"Backup {backup_id} is intact: {result.checked} files, {human_size(result.bytes)} match the manifest."
            + (f" {references} outputs are kept by reference in R2 (restore checks them)." if references else "")
        )
