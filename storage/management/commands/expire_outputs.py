from django.core.management.base import BaseCommand

from storage.take_home import expire_outputs


class Command(BaseCommand):
    help = (
        "Delete the outputs of workshops whose retention ('keep outputs for (days)' after their end) has run out. "
        "The reconciler does this once an hour; this runs it now."
    )

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="Say what would be deleted, delete nothing")

    def handle(self, *args, dry_run: bool, **options):
        done = expire_outputs(dry_run=dry_run)
        if not done:
            self.stdout.write("No workshop's outputs are past their retention.")
        for slug, count in done.items():
            verb = "Would delete" if dry_run else "Deleted"
            self.stdout.write(f"{verb} {count} outputs of {slug}")
