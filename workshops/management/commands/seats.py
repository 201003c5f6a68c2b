"""One participant at a time, from the command line: a new card for a lost one, seats for late arrivals, more
budget for one seat, take-home links to their outputs, their data deleted on request. The admin does the same
(docs/INSTRUCTOR_GUIDE.md, "One participant at a time"); every change is in the audit log, named by the command
and the system user who ran it."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from storage import take_home
from workshops import audit, frontends
from workshops.credentials import CredentialFiles, print_credentials
from workshops.models import Seat, Workshop
from workshops.services import (
    WorkshopError,
    add_seats_to_running,
    parse_names,
    raise_seat_budget,
    reissue_seat_cards,
)


def _money(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise CommandError(f"--cost must be an amount of money such as 5 or 2.50, not {text!r}.") from None
    if not value.is_finite():
        raise CommandError(f"--cost must be an amount of money such as 5 or 2.50, not {text!r}.")
    return value


class Command(BaseCommand):
    help = "Handle one participant at a time: new-card (a lost card), add (late participants), budget (more GPU time)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("workshop", help="The workshop's slug")
        actions = parser.add_subparsers(
            dest="action", required=True, metavar="{new-card,add,budget,take-home,revoke-links,delete-data}"
        )

        card = actions.add_parser(
            "new-card",
            help="A new password and join link for these seats; the other seats' cards keep working",
        )
        card.add_argument("seats", nargs="+", help="Seat labels (user003) or participants' usernames")
        self._credential_options(card)

        add = actions.add_parser("add", help="Add seats to the workshop (it may be under way) and print their cards")
        add.add_argument("count", nargs="?", type=int, help="How many seats (or give --names)")
        add.add_argument(
            "--names", type=Path, help="A file of participants' names: one per line, or a CSV with a name column"
        )
        self._credential_options(add)

        budget = actions.add_parser("budget", help="Give these seats more than the workshop's per-seat budget")
        budget.add_argument("seats", nargs="+", help="Seat labels (user003) or participants' usernames")
        budget.add_argument("--gpu-minutes", type=float, default=0, help="More GPU time, in minutes")
        budget.add_argument("--gpu-seconds", type=int, default=0, help="More GPU time, in seconds")
        budget.add_argument("--cost", type=_money, default=Decimal("0"), help="More money, e.g. 5 or 2.50")

        links = actions.add_parser("take-home", help="A personal link to their outputs for these seats (or all)")
        links.add_argument("seats", nargs="*", help="Seat labels or usernames; none: every seat")
        links.add_argument("--json", type=Path, help="Write the links here (mode 600) instead of printing them")

        revoke = actions.add_parser("revoke-links", help="End these seats' take-home links now")
        revoke.add_argument("seats", nargs="+", help="Seat labels or usernames")

        delete = actions.add_parser(
            "delete-data", help="Delete a participant's outputs, uploads and saved workflows (on their request)"
        )
        delete.add_argument("seats", nargs="+", help="Seat labels or usernames")
        delete.add_argument("--yes", action="store_true", help="Confirm: the files cannot be brought back")

    @staticmethod
    def _credential_options(parser: CommandParser) -> None:
        parser.add_argument("--credentials-json", type=Path, help="Write usernames, passwords and join links here")
        parser.add_argument("--credentials-html", type=Path, help="Write a printable sheet of the cards here")
        parser.add_argument("--credentials-pdf", type=Path, help="Write the same cards as an A4 PDF here")

    def handle(self, *args: Any, workshop: str, action: str, **options: Any) -> None:
        try:
            found = Workshop.objects.get(slug=workshop)
        except Workshop.DoesNotExist:
            slugs = (
                ", ".join(Workshop.objects.filter(archived_at=None).order_by("slug").values_list("slug", flat=True))
                or "none"
            )
            raise CommandError(f"No workshop called {workshop!r}; the open ones are: {slugs}.") from None
        actor = audit.CommandLine(f"seats {action}")
        try:
            if action == "new-card":
                self._new_card(found, options, actor)
            elif action == "add":
                self._add(found, options, actor)
            elif action == "budget":
                self._budget(found, options, actor)
            elif action == "take-home":
                self._take_home(found, options, actor)
            elif action == "revoke-links":
                ended = take_home.revoke_links(self._seats(found, options["seats"]), actor=actor)
                self.stdout.write(self.style.SUCCESS(f"Revoked {ended} take-home link(s)."))
            else:
                self._delete_data(found, options, actor)
        except WorkshopError as exc:
            raise CommandError(str(exc)) from exc

    def _seats(self, workshop: Workshop, names: list[str]) -> list[Seat]:
        """The seats named by label or by their participant's username, all of them or an error naming the rest."""
        seats = list(workshop.seats.select_related("participant", "workshop"))
        by_name = {seat.label: seat for seat in seats}
        by_name |= {seat.participant.get_username(): seat for seat in seats if seat.participant is not None}
        unknown = [name for name in names if name not in by_name]
        if unknown:
            raise CommandError(
                f"{workshop.slug} has no seat {', '.join(map(repr, unknown))}: give seat labels (user003) or "
                f"usernames ({workshop.slug}-user003); its seats are {seats[0].label}…{seats[-1].label}."
                if seats
                else f"{workshop.slug} has no seats."
            )
        return list({by_name[name].pk: by_name[name] for name in names}.values())

    def _files(self, options: dict[str, Any]) -> CredentialFiles:
        files = CredentialFiles(
            json_path=options["credentials_json"],
            html_path=options["credentials_html"],
            pdf_path=options["credentials_pdf"],
        )
        if refusal := files.refuse_existing():
            raise CommandError(refusal)
        return files

    def _print_cards(self, workshop: Workshop, files: CredentialFiles, credentials: list[Any], heading: str) -> None:
        self.stdout.write(self.style.SUCCESS(heading))
        for line in files.write(workshop, credentials):
            self.stdout.write(line)
        if not files.any():
            print_credentials(self.stdout, credentials)

    def _new_card(self, workshop: Workshop, options: dict[str, Any], actor: audit.Actor) -> None:
        seats = self._seats(workshop, options["seats"])
        files = self._files(options)
        credentials = reissue_seat_cards(workshop, seats, actor=actor)
        labels = ", ".join(c.seat for c in credentials)
        self._print_cards(
            workshop,
            files,
            credentials,
            f"New card for {labels} of {workshop.slug}: the old password and join link no longer work, and whoever "
            "signed in with them is signed out. The other seats are unchanged.",
        )

    def _add(self, workshop: Workshop, options: dict[str, Any], actor: audit.Actor) -> None:
        count, names_file = options["count"], options["names"]
        names = None
        if names_file is not None:
            try:
                names = parse_names(names_file.read_text(encoding="utf-8-sig"))
            except (OSError, UnicodeDecodeError) as exc:
                raise CommandError(f"Cannot read the names in {names_file}: {exc}") from exc
            if not names:
                raise CommandError(f"{names_file} holds no names.")
            count = len(names) if count is None else count
        if count is None:
            raise CommandError("Say how many seats to add (a number), or give --names FILE.")
        files = self._files(options)
        credentials = add_seats_to_running(workshop, count, names=names, actor=actor)
        self._print_cards(
            workshop,
            files,
            credentials,
            f"Added {len(credentials)} seats to {workshop.slug}: {', '.join(c.seat for c in credentials)}. "
            "Their ComfyUI starts now; the other seats are unchanged.",
        )
        if not frontends.supervisor_running():
            self.stdout.write(
                self.style.WARNING(
                    "No seat supervisor is running, so their ComfyUI will start once one runs (`make run` runs one, "
                    "or `python manage.py run_seat_frontends`)."
                )
            )

    def _budget(self, workshop: Workshop, options: dict[str, Any], actor: audit.Actor) -> None:
        minutes, seconds, cost = options["gpu_minutes"], options["gpu_seconds"], options["cost"]
        if minutes < 0 or seconds < 0:
            raise CommandError("A budget can be raised here, not lowered: give a positive amount.")
        gpu_seconds = seconds + round(minutes * 60)
        seats = self._seats(workshop, options["seats"])
        raised = raise_seat_budget(seats, gpu_seconds=gpu_seconds, cost=cost, actor=actor)
        for seat in raised:
            limits = []
            if seat.gpu_seconds_limit is not None:
                limits.append(f"{seat.gpu_seconds_used:.0f} of {seat.gpu_seconds_limit} GPU seconds used")
            if seat.cost_limit is not None:
                limits.append(f"{seat.cost_used:.2f} of {seat.cost_limit:.2f} spent")
            self.stdout.write(self.style.SUCCESS(f"{seat}: {'; '.join(limits)}"))

    def _take_home(self, workshop: Workshop, options: dict[str, Any], actor: audit.Actor) -> None:
        target = options["json"]
        if target is not None and target.exists():
            raise CommandError(f"{target} exists already; refusing to overwrite links.")
        seats = self._seats(workshop, options["seats"]) if options["seats"] else list(workshop.seats.all())
        issued = take_home.issue_links(workshop, seats, actor=actor)
        self.stdout.write(
            self.style.SUCCESS(f"{len(issued)} take-home link(s), valid until {issued[0].expires_at:%Y-%m-%d %H:%M}")
        )
        if target is not None:
            rows = [
                {"seat": i.seat, "name": i.name, "url": i.url, "expires_at": i.expires_at.isoformat()} for i in issued
            ]
            CredentialFiles._write(target, json.dumps({"workshop": workshop.slug, "links": rows}, indent=2).encode())
            self.stdout.write(f"Links: {target}")
            return
        for link in issued:
            self.stdout.write(f"  {link.seat}  {link.name or '-'}  {link.url}")

    def _delete_data(self, workshop: Workshop, options: dict[str, Any], actor: audit.Actor) -> None:
        seats = self._seats(workshop, options["seats"])
        if not options["yes"]:
            raise CommandError(
                f"This deletes the outputs, uploads and saved workflows of {', '.join(s.label for s in seats)} for "
                "good. Run it again with --yes to confirm."
            )
        for seat in seats:
            deleted = take_home.delete_participant_data(seat, actor=actor)
            self.stdout.write(
                self.style.SUCCESS(
                    f"{seat}: deleted {deleted.outputs} outputs, {deleted.uploads} uploads and {deleted.links} "
                    "take-home link(s); its ComfyUI's saved workflows are removed at its next reconcile."
                )
            )
            if deleted.failed:
                self.stderr.write(
                    self.style.ERROR(f"{len(deleted.failed)} file(s) could not be deleted now; run it again later.")
                )
