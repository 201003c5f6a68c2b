from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from gpu_backends.models import GpuBackend
from workshops.models import Workshop


def _price(value: str) -> Decimal:
    try:
        price = Decimal(value)
    except InvalidOperation:
        raise CommandError(f"--price-per-hour must be a number, not {value!r}") from None
    if price < 0:
        raise CommandError("--price-per-hour cannot be negative")
    return price


class Command(BaseCommand):
    help = "Add (or update) a GPU backend: a ComfyUI server, or the built-in simulator."

    def add_arguments(self, parser):
        parser.add_argument("name")
        parser.add_argument("--kind", required=True, choices=GpuBackend.Kind.values)
        parser.add_argument("--url", required=True)
        parser.add_argument("--max-concurrency", type=int, default=1)
        parser.add_argument("--gpu-type", default="")
        parser.add_argument("--price-per-hour", type=_price, default=Decimal("0"))
        parser.add_argument("--order", type=int, default=0)
        parser.add_argument("--workshop", action="append", default=[], help="Attach to this workshop (repeatable)")

    def handle(self, *args, name, kind, url, max_concurrency, gpu_type, price_per_hour, order, workshop, **options):
        if max_concurrency < 1:
            raise CommandError("--max-concurrency must be at least 1")
        workshops = []
        for slug in workshop:
            found = Workshop.objects.filter(slug=slug).first()
            if found is None:
                raise CommandError(f"No workshop called {slug!r}")
            workshops.append(found)
        backend = GpuBackend.objects.filter(name=name).first() or GpuBackend(name=name)
        created = backend.pk is None
        backend.kind, backend.url, backend.max_concurrency = kind, url, max_concurrency
        backend.gpu_type, backend.price_per_hour, backend.order = gpu_type, price_per_hour, order
        try:
            backend.full_clean()
        except ValidationError as exc:
            raise CommandError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.message_dict.items())) from exc
        backend.save()
        for found in workshops:
            found.backends.add(backend)
        self.stdout.write(self.style.SUCCESS(f"{'Added' if created else 'Updated'} backend {name} ({kind}, {url})"))
