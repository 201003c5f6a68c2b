"""``python -m workshops.seat_frontend``: serve one seat's ComfyUI (configured by the environment)."""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from .app import build_app
from .config import ConfigError, SeatConfig
from .frontend_package import FrontendMissing


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s seat %(message)s")
    try:
        config = SeatConfig.from_env()
    except ConfigError as exc:
        print(f"seat frontend: {exc}", file=sys.stderr)
        return 2
    logging.getLogger("comfyume.seat").info(
        "Seat %s on http://%s:%s%s", config.label, config.host, config.port, config.base_path
    )
    try:
        app = build_app(config)
    except FrontendMissing as exc:
        print(f"seat frontend: {exc}", file=sys.stderr)
        return 2
    web.run_app(app, host=config.host, port=config.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
