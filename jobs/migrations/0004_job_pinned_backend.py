"""Jobs can be pinned to one GPU backend (the live dashboard's "move"); the scheduler's head-of-queue indexes
gain the pin so a claim still costs one index seek per seat; finished jobs are indexed by time for the charts."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("gpu_backends", "0002_serverless_backends"),
        ("jobs", "0003_job_backend_ref_job_callback_token_hash"),
        ("workshops", "0004_seat_budgets"),
    ]

    operations = [
        migrations.AddField(
            model_name="job",
            name="pinned_backend",
            field=models.ForeignKey(
                blank=True,
                db_index=False,
                help_text="Only this GPU backend may run the job. Empty: any of the workshop's backends.",
                null=True,
                on_delete=django.db.models.deletion.SET_NULL,
                related_name="pinned_jobs",
                to="gpu_backends.gpubackend",
            ),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(fields=["seat", "status", "pinned_backend", "id"], name="job_seat_pin_head"),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(
                models.F("seat"),
                models.F("status"),
                models.F("pinned_backend"),
                models.OrderBy(models.F("instructor_lane"), descending=True),
                models.OrderBy(models.F("priority"), descending=True),
                models.F("id"),
                name="job_seat_pin_priority_head",
            ),
        ),
        migrations.AddIndex(
            model_name="job",
            index=models.Index(fields=["workshop", "finished_at"], name="job_workshop_finished"),
        ),
        # Replaced by the two above (the same columns plus the pin), which are built before these go.
        migrations.RemoveIndex(
            model_name="job",
            name="job_seat_head",
        ),
        migrations.RemoveIndex(
            model_name="job",
            name="job_seat_priority_head",
        ),
    ]
