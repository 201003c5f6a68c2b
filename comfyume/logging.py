"""JSON log lines for production, with the job/seat/backend ids a record carries in ``extra``."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

_CONTEXT_KEYS = ("job_id", "prompt_id", "seat", "workshop", "backend", "event")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, context ids, and the exception if any."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _CONTEXT_KEYS:
            if key in record.__dict__:
                payload[key] = record.__dict__[key]
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)
