"""ComfyuME settings: one module, driven by the environment.

With no environment at all the platform runs on embedded defaults (SQLite and an embedded Redis under
``COMFYUME_DATA_DIR``, the ComfyUI simulator as GPU). ``COMFYUME_ENV=production`` turns the safety checks
on: a missing ``SECRET_KEY`` or ``DEBUG`` on with a public host refuses to start, naming the variable.
Every variable is listed in docs/CONFIGURATION.md.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

from comfyume import redis_url
from workshops.seat_frontend import frontend_package

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()

COMFYUME_ENV = env.str("COMFYUME_ENV", default="embedded")
if COMFYUME_ENV not in ("embedded", "production"):
    raise ImproperlyConfigured(f"COMFYUME_ENV must be 'embedded' or 'production', not {COMFYUME_ENV!r}.")
PRODUCTION = COMFYUME_ENV == "production"

DATA_DIR = Path(env.str("COMFYUME_DATA_DIR", default=str(BASE_DIR / "var"))).resolve()

DEBUG = env.bool("DEBUG", default=not PRODUCTION)

LOCAL_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=LOCAL_HOSTS)
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])


def _is_public_host(host: str) -> bool:
    host = host.lstrip(".")
    return host not in ("127.0.0.1", "localhost", "[::1]", "testserver") and not host.endswith(".localhost")


if DEBUG and any(_is_public_host(h) for h in ALLOWED_HOSTS):
    raise ImproperlyConfigured(
        "DEBUG is on while ALLOWED_HOSTS names a public host "
        f"({', '.join(h for h in ALLOWED_HOSTS if _is_public_host(h))}): set DEBUG=false for a public deployment."
    )


def _embedded_secret_key() -> str:
    """Keep one random key per data directory so sessions survive a restart of `make run`."""
    path = DATA_DIR / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if PRODUCTION:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set: production (COMFYUME_ENV=production) needs a long random SECRET_KEY."
        )
    SECRET_KEY = _embedded_secret_key()

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "django_rq",
    "workshops",
    "gpu_backends",
    "jobs",
    "storage",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "comfyume.urls"
ASGI_APPLICATION = "comfyume.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database: SQLite under DATA_DIR unless DATABASE_URL names another. ---
DATABASE_URL = env.str("DATABASE_URL", default="") or f"sqlite:///{DATA_DIR / 'comfyume.sqlite3'}"
DATABASES = {"default": env.db_url_config(DATABASE_URL)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions take the write lock at BEGIN, so two schedulers cannot both read the same free
    # GPU slot and then both claim it; WAL lets readers go on meanwhile.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
    DATABASES["default"].setdefault("TEST", {})["NAME"] = str(DATA_DIR / "test.sqlite3")
# Keep connections between jobs: reconnecting (and, for SQLite, re-running the PRAGMAs above) would be paid on
# every dispatch (docs/BENCHMARKS.md has the figures).
DATABASES["default"]["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# That does not help the web server: under ASGI Django runs each request in a thread of its own, and a thread's
# connection ends with it. Every request would open a new PostgreSQL connection (a server process forked and
# authenticated, and a connection storm when a class of participants is busy). Each process
# keeps a pool of them instead (Django's, on psycopg_pool), checked as they are handed out.
DATABASE_POOL_MAX_SIZE = env.int("DATABASE_POOL_MAX_SIZE", default=10)
# Requests one web process runs at once (middleware and view, each in a thread); the rest wait on its event loop,
# which also relays the live events (comfyume.handlers). Not above the database pool's size.
_web_concurrency = env.str("COMFYUME_WEB_CONCURRENCY", default="4").strip()
if not _web_concurrency.isdigit() or int(_web_concurrency) < 1:
    raise ImproperlyConfigured(
        f"COMFYUME_WEB_CONCURRENCY must be a whole number of at least 1, not {_web_concurrency!r}."
    )
WEB_CONCURRENCY = int(_web_concurrency)
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and DATABASE_POOL_MAX_SIZE > 0:
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps them
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": DATABASE_POOL_MAX_SIZE,
        "timeout": 10,  # seconds a request waits for a free connection before it fails
    }
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: an embedded server on a unix socket unless REDIS_URL names a real one. ---
EMBEDDED_REDIS = not env.str("REDIS_URL", default="")
EMBEDDED_REDIS_DIR = Path(env.str("COMFYUME_REDIS_DIR", default=str(DATA_DIR / "redis")))
# A Redis of its own (REDIS_URL) may want a password and TLS: both can be in the URL (rediss://:pw@host:6380/0),
# or given apart, and go into the one URL every client builds from (comfyume/redis_url.py).
REDIS_URL = redis_url.from_environment(default=f"unix://{EMBEDDED_REDIS_DIR / 'redis.sock'}")
REDIS_PREFIX = env.str("COMFYUME_REDIS_PREFIX", default="comfyume")

CHANNEL_LAYERS = {
    "default": {
        # Redis pub/sub: a group_send is one PUBLISH and each web process's subscriber gets it pushed, instead of
        # the list layer's group lookup, a script per member channel and a blocking pop per receive (faster to the
        # participant: docs/BENCHMARKS.md). Live events are fire-and-forget either way: a socket that is not
        # connected misses them and catches up from the API.
        "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
        "CONFIG": {
            # redis-py 8 gives every connection a 5 s read timeout by default; the subscriber waits for messages
            # far longer than that, so no read timeout (a finite one made cancelled receives hang at shutdown).
            "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
            "prefix": f"{REDIS_PREFIX}:asgi",
        },
    }
}

RQ_QUEUE_NAME = env.str("COMFYUME_RQ_QUEUE", default=f"{REDIS_PREFIX}-dispatch")
RQ_QUEUES = {RQ_QUEUE_NAME: {"URL": REDIS_URL, "DEFAULT_TIMEOUT": 3600}}
RQ_SHOW_ADMIN_LINK = True

# --- Auth ---
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "comfyume.staticstorage.ModuleManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

if PRODUCTION:
    SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=True)
    CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")


def _one_of(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.str(name, default=default)
    if value not in choices:
        raise ImproperlyConfigured(f"{name} must be one of {', '.join(choices)}, not {value!r}.")
    return value


# --- The job pipeline ---
COMFYUME = {
    # GET /api/queue/status for anyone (counts and GPU states, nothing personal); off: staff only.
    "PUBLIC_QUEUE_STATUS": env.bool("COMFYUME_PUBLIC_QUEUE_STATUS", default=True),
    # Largest prompt body the hub accepts (bytes). ComfyUI has no limit; 10 MB is far above any real workflow.
    "MAX_PROMPT_BYTES": env.int("COMFYUME_MAX_PROMPT_BYTES", default=10 * 1024 * 1024),
    # Largest body any other request may carry (bytes): sign-in and admin forms, JSON calls. The prompt, uploads
    # and a GPU worker's output file have their own limits; a request without credentials gets 64 KB
    # (comfyume/bodylimits.py). Bigger bodies are refused from their headers, before a byte is read.
    "MAX_BODY_BYTES": env.int("COMFYUME_MAX_BODY_BYTES", default=int(2.5 * 1024 * 1024)),
    # A job running longer than this (seconds) is interrupted and marked timed_out; per workshop override.
    "JOB_TIMEOUT": env.int("COMFYUME_JOB_TIMEOUT", default=30 * 60),
    # A queued job waits this long (seconds) for a working backend before it fails with a reason.
    "BACKEND_DOWN_DEADLINE": env.int("COMFYUME_BACKEND_DOWN_DEADLINE", default=15 * 60),
    # A running job whose worker has not shown a sign of life for this long (seconds) is orphaned.
    "HEARTBEAT_TIMEOUT": env.int("COMFYUME_HEARTBEAT_TIMEOUT", default=60),
    # How often (seconds) the dispatch loop touches the job row while it waits for events.
    "HEARTBEAT_INTERVAL": env.float("COMFYUME_HEARTBEAT_INTERVAL", default=10.0),
    # Live previews (ComfyUI's binary preview frames) relayed to the seat per second and job, at most; 0: none.
    "PREVIEW_FPS": env.float("COMFYUME_PREVIEW_FPS", default=4.0),
    # Note each job's steps with their times (jobs.trace; `manage.py trace_job`, `python -m benchmarks realcomfy`).
    "TRACE_JOBS": env.bool("COMFYUME_TRACE_JOBS", default=False),
    # How often (seconds) the reconciler sweeps timeouts, orphans and backend health. Not the hot path.
    "RECONCILE_INTERVAL": env.float("COMFYUME_RECONCILE_INTERVAL", default=5.0),
    # How long (seconds) a cached object_info is trusted before the reconciler refreshes it.
    "OBJECT_INFO_TTL": env.int("COMFYUME_OBJECT_INFO_TTL", default=600),
    # Connect/read timeouts (seconds) for talking to a GPU backend.
    "BACKEND_CONNECT_TIMEOUT": env.float("COMFYUME_BACKEND_CONNECT_TIMEOUT", default=5.0),
    "BACKEND_READ_TIMEOUT": env.float("COMFYUME_BACKEND_READ_TIMEOUT", default=30.0),
    # How many times a job is dispatched before a lost worker or backend fails it for good.
    "MAX_ATTEMPTS": env.int("COMFYUME_MAX_ATTEMPTS", default=2),
    # --- Serverless GPUs (Verda): docs/GPU_WORKER.md ---
    # Where GPU workers reach the hub's callback API (must be reachable from the GPU containers).
    "CALLBACK_BASE_URL": env.str("COMFYUME_CALLBACK_URL", default="").rstrip("/"),
    # How long a synchronous request to a GPU worker may take (seconds): the longest job plus a cold start, i.e.
    # COMFYUME_JOB_TIMEOUT (1800) + COMFYUME_COLD_START_TIMEOUT (1200) by default.
    "SERVERLESS_REQUEST_TIMEOUT": env.float("COMFYUME_SERVERLESS_REQUEST_TIMEOUT", default=50 * 60.0),
    # A started worker silent (no event, no heartbeat) this long has lost its replica: the job is retried once.
    "WORKER_SILENCE": env.float("COMFYUME_WORKER_SILENCE", default=90.0),
    # A request no replica has taken this long is given back to the queue and the backend marked failing.
    "COLD_START_TIMEOUT": env.float("COMFYUME_COLD_START_TIMEOUT", default=20 * 60.0),
    # How often (seconds) an asynchronous request's status is asked of Verda (a backstop; callbacks carry the news).
    "ASYNC_POLL_INTERVAL": env.float("COMFYUME_ASYNC_POLL_INTERVAL", default=15.0),
    # How often (seconds) the GPU worker sends a heartbeat while a node runs without events.
    "WORKER_HEARTBEAT": env.float("COMFYUME_WORKER_HEARTBEAT", default=5.0),
}

# Django's own body limits follow ours: a body the hub accepts never meets Django's HTML "400 RequestDataTooBig"
# (views that read a larger body, the prompt and the uploads, stream it instead of using request.body), and a
# request body or uploaded file over 2.5 MB is spooled to a temporary file, not held in memory.
DATA_UPLOAD_MAX_MEMORY_SIZE = COMFYUME["MAX_BODY_BYTES"]
FILE_UPLOAD_MAX_MEMORY_SIZE = int(2.5 * 1024 * 1024)

# Where job outputs and uploaded inputs are kept: "local" (a directory, the default) or "r2" (Cloudflare R2, or
# any S3-compatible server, through boto3). docs/CONFIGURATION.md#object-storage
STORAGE_DIR = Path(env.str("COMFYUME_STORAGE_DIR", default=str(DATA_DIR / "storage"))).resolve()
OBJECT_STORE = {
    "KIND": _one_of("COMFYUME_STORAGE", "local", ("local", "r2")),
    # R2's S3 endpoint is https://<account>.r2.cloudflarestorage.com (".eu." in it for the EU jurisdiction);
    # ENDPOINT_URL overrides it (another S3-compatible server, or the test suite's own).
    "R2_ACCOUNT_ID": env.str("COMFYUME_R2_ACCOUNT_ID", default=""),
    "R2_JURISDICTION": env.str("COMFYUME_R2_JURISDICTION", default=""),
    "ENDPOINT_URL": env.str("COMFYUME_R2_ENDPOINT_URL", default=""),
    "BUCKET": env.str("COMFYUME_R2_BUCKET", default=""),
    "ACCESS_KEY_ID": env.str("COMFYUME_R2_ACCESS_KEY_ID", default=""),
    "SECRET_ACCESS_KEY": env.str("COMFYUME_R2_SECRET_ACCESS_KEY", default=""),
    "REGION": env.str("COMFYUME_R2_REGION", default="auto"),
    # How long a presigned GET (downloads, video playback) or PUT (GPU uploads) URL stays valid, in seconds.
    "PRESIGN_SECONDS": env.int("COMFYUME_PRESIGN_SECONDS", default=3600),
    # Files above this size (MB) go up in parts of MULTIPART_PART_MB.
    "MULTIPART_THRESHOLD_MB": env.int("COMFYUME_MULTIPART_THRESHOLD_MB", default=64),
    "MULTIPART_PART_MB": env.int("COMFYUME_MULTIPART_PART_MB", default=16),
}

# --- Logging: one line per record; JSON when LOG_FORMAT=json (production). ---
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOG_FORMAT = env.str("LOG_FORMAT", default="json" if PRODUCTION else "text")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "comfyume.logging.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "daphne": {"level": "WARNING"},
        "rq.worker": {"level": "WARNING"},
    },
}

# /metrics answers only with `Authorization: Bearer <METRICS_TOKEN>` when this is set.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")

# The address participants use (join links and printed credentials are built from it).
PUBLIC_URL = env.str("COMFYUME_PUBLIC_URL", default=f"http://127.0.0.1:{env.int('PORT', default=8000)}").rstrip("/")
COMFYUME["CALLBACK_BASE_URL"] = COMFYUME["CALLBACK_BASE_URL"] or PUBLIC_URL

# --- Backups: docs/BACKUP.md ---
BACKUP = {
    # Where `manage.py backup` and the scheduled backups write: file:///path or s3://bucket/prefix (the s3 form uses
    # the COMFYUME_R2_* endpoint and credentials). Empty: no scheduled backups.
    "URL": env.str("COMFYUME_BACKUP_URL", default=""),
    # Hours between scheduled backups, run by the reconciler; 0 turns the schedule off.
    "INTERVAL_HOURS": env.float("COMFYUME_BACKUP_INTERVAL_HOURS", default=24.0),
    # Retention: the newest backup of each of this many days, weeks and months is kept.
    "KEEP_DAILY": env.int("COMFYUME_BACKUP_KEEP_DAILY", default=5),
    "KEEP_WEEKLY": env.int("COMFYUME_BACKUP_KEEP_WEEKLY", default=3),
    "KEEP_MONTHLY": env.int("COMFYUME_BACKUP_KEEP_MONTHLY", default=3),
}

# Verda's management API (scaling for pre-warm and scale-to-zero, replica status). Empty: no scaling, and a
# backend's state comes from its requests alone. The inference key is per backend (GpuBackend.api_key_env).
VERDA = {
    "API_URL": env.str("COMFYUME_VERDA_API_URL", default="https://api.datacrunch.io/v1").rstrip("/"),
    "CLIENT_ID": env.str("COMFYUME_VERDA_CLIENT_ID", default=""),
    "CLIENT_SECRET": env.str("COMFYUME_VERDA_CLIENT_SECRET", default=""),
}

# --- Seat frontends: one light ComfyUI server per seat (docs/CONFIGURATION.md#seat-frontends) ---


SEAT_FRONTENDS = {
    # How seat frontends run: "process" (local supervised processes) or "docker" (Docker Engine API).
    "DRIVER": _one_of("COMFYUME_SEAT_DRIVER", "docker" if PRODUCTION else "process", ("process", "docker")),
    # How a browser reaches a seat: "port" (each seat on its own port of this host, `make run` without nginx)
    # or "path" (https://<host>/userNNN/ behind the nginx config `manage.py render_nginx` writes).
    "ROUTING": _one_of("COMFYUME_SEAT_ROUTING", "path" if PRODUCTION else "port", ("port", "path")),
    # Where seat frontends reach the hub (their API calls and session checks); not the public address.
    # Production's default is the compose service name of the web process.
    "HUB_URL": env.str(
        "COMFYUME_HUB_INTERNAL_URL",
        default="http://web:8000" if PRODUCTION else f"http://127.0.0.1:{env.int('PORT', default=8000)}",
    ).rstrip("/"),
    # The process driver: the interface seat frontends listen on and the first port it hands out.
    "BIND_HOST": env.str("COMFYUME_SEAT_BIND_HOST", default="127.0.0.1"),
    "PORT_BASE": env.int("COMFYUME_SEAT_PORT_BASE", default=8101),
    # Where seats' userdata (workflows, settings) and uploaded images live (process driver).
    "DATA_DIR": Path(env.str("COMFYUME_SEAT_DATA_DIR", default=str(DATA_DIR / "seats"))).resolve(),
    # The docker driver: engine (DOCKER_HOST as the docker CLI reads it), image, limits, network.
    "DOCKER_HOST": env.str("DOCKER_HOST", default="unix:///var/run/docker.sock"),
    "IMAGE": env.str("COMFYUME_SEAT_IMAGE", default="comfyume/seat-frontend:latest"),
    "MEMORY": env.str("COMFYUME_SEAT_MEMORY", default="256m"),
    "CPUS": env.float("COMFYUME_SEAT_CPUS", default=0.5),
    "NETWORK": env.str("COMFYUME_SEAT_NETWORK", default="comfyume-seats"),
    # How long (seconds) a seat frontend trusts the hub's answer about a browser session.
    "AUTH_CACHE_SECONDS": env.float("COMFYUME_SEAT_AUTH_CACHE_SECONDS", default=5.0),
    # Largest image a participant may upload (MB).
    "MAX_UPLOAD_MB": env.int("COMFYUME_MAX_UPLOAD_MB", default=50),
    # The ComfyUI web frontend every seat serves (docs/CONFIGURATION.md, "The ComfyUI frontend"), and where the
    # process driver finds a version other than the installed one (manage.py install_frontend puts it there).
    "FRONTEND_VERSION": env.str("COMFYUME_FRONTEND_VERSION", default="") or frontend_package.DEFAULT_VERSION,
    "FRONTENDS_DIR": Path(env.str("COMFYUME_FRONTENDS_DIR", default=str(DATA_DIR / "frontends"))).resolve(),
}

try:
    frontend_package.check_version(SEAT_FRONTENDS["FRONTEND_VERSION"])
except frontend_package.FrontendMissing as exc:
    raise ImproperlyConfigured(str(exc)) from None

if SEAT_FRONTENDS["DRIVER"] == "docker" and urlsplit(SEAT_FRONTENDS["HUB_URL"]).hostname in ("127.0.0.1", "localhost"):
    raise ImproperlyConfigured(
        "COMFYUME_HUB_INTERNAL_URL points at localhost, which inside a seat container is the container itself; "
        "set it to the hub's address on the seats' network (for example http://web:8000)."
    )

# Failed sign-ins allowed per username, and per client address (a workshop room shares one behind its NAT), in
# a window of LOGIN_RATE_WINDOW seconds; every password sign-in goes through the limit (workshops.ratelimit).
LOGIN_RATE_LIMIT = env.int("COMFYUME_LOGIN_RATE_LIMIT", default=10)
LOGIN_RATE_LIMIT_PER_ADDRESS = env.int("COMFYUME_LOGIN_RATE_LIMIT_PER_ADDRESS", default=100)
LOGIN_RATE_WINDOW = env.int("COMFYUME_LOGIN_RATE_WINDOW", default=300)
for _name in ("LOGIN_RATE_LIMIT", "LOGIN_RATE_LIMIT_PER_ADDRESS", "LOGIN_RATE_WINDOW"):
    if globals()[_name] < 1:
        raise ImproperlyConfigured(f"COMFYUME_{_name} must be at least 1, not {globals()[_name]}.")
AUTHENTICATION_BACKENDS = ["workshops.ratelimit.SignInLimitBackend", "django.contrib.auth.backends.ModelBackend"]
# Let nginx's seat check and seat frontends accept `Authorization: Basic` with seat credentials.
SEAT_HTTP_BASIC = env.bool("COMFYUME_SEAT_HTTP_BASIC", default=False)
