"""Settings for the MLOps console. Every value comes from the environment (see .env.example)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from mlops_console.env import EnvError, env_bool, env_database, env_int, env_list, env_secret, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("VAR_DIR", str(BASE_DIR / "var")))

try:
    DEBUG = env_bool("DEBUG", False)
    SECRET_KEY = env_secret("SECRET_KEY", debug=DEBUG, dev_default="dev-only-insecure-key-never-used-in-production")
    ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])
    CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
    DATABASES = {"default": env_database("DATABASE_URL", f"sqlite:///{VAR_DIR / 'db.sqlite3'}").as_django()}
    # Seconds a process keeps its database connection (0: a new one per request). Production sets 60: opening a
    # Postgres connection costs about 4 ms, as much as storing 100 prediction events; health checks drop a
    # connection the server closed before it is used.
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 0, minimum=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    ARTIFACT_ROOT = Path(env_str("ARTIFACT_ROOT", str(VAR_DIR / "artifacts")))
    MAX_UPLOAD_BYTES = env_int("MAX_UPLOAD_BYTES", 2 * 1024**3, minimum=1)
    # Uploaded archives (model bundles, skops files): what they may unpack to, in total and per byte uploaded.
    MAX_UPLOAD_UNPACKED_BYTES = env_int("MAX_UPLOAD_UNPACKED_BYTES", 4 * 1024**3, minimum=1)
    MAX_UPLOAD_COMPRESSION_RATIO = env_int("MAX_UPLOAD_COMPRESSION_RATIO", 100, minimum=1)
    CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
    CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
    # The queue tasks go to, including the follow-up tasks a worker queues (the next pipeline stage).
    CELERY_TASK_DEFAULT_QUEUE = env_str("CELERY_TASK_DEFAULT_QUEUE", "celery")
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31536000, minimum=0)
    SECURE_BEHIND_PROXY = env_bool("SECURE_BEHIND_PROXY", False)
    # Sign-in lockout (docs/projects-and-access.md): this many failures for one username or from one address
    # lock it until LOGIN_COOLOFF_SECONDS pass without another failure.
    LOGIN_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 10, minimum=1)
    LOGIN_COOLOFF_SECONDS = env_int("LOGIN_COOLOFF_SECONDS", 60, minimum=1)
    EMAIL_BACKEND = env_str(
        "EMAIL_BACKEND",
        "django.core.mail.backends.console.EmailBackend" if DEBUG else "django.core.mail.backends.smtp.EmailBackend",
    )
    EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
    EMAIL_PORT = env_int("EMAIL_PORT", 25, minimum=1, maximum=65535)
    EMAIL_HOST_USER = env_str("EMAIL_HOST_USER")
    EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD")
    EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", False)
    DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "mlops-console@localhost")
    LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
    # json: one JSON object per line (docs/observability.md); text: lines for people.
    LOG_FORMAT = env_str("LOG_FORMAT", "text").lower()
    if LOG_FORMAT not in {"text", "json"}:
        raise EnvError("LOG_FORMAT must be text or json")
    # Redis redelivers a message nobody acknowledged after this many seconds (tasks are acks_late).
    CELERY_VISIBILITY_TIMEOUT = env_int("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=1)
    # Soft time limits of pipeline stage and HPO trial tasks; the hard limit is 2 minutes later.
    EXPERIMENTS_STAGE_SOFT_TIME_LIMIT = env_int("EXPERIMENTS_STAGE_SOFT_TIME_LIMIT", 2 * 3600, minimum=1)
    EXPERIMENTS_TRIAL_SOFT_TIME_LIMIT = env_int("EXPERIMENTS_TRIAL_SOFT_TIME_LIMIT", 3600, minimum=1)
    # Registry: absolute links in emails and webhook payloads; pickle trust; how long a promotion request stays open.
    CONSOLE_BASE_URL = env_str("CONSOLE_BASE_URL", "http://localhost:8000").rstrip("/")
    REGISTRY_TRUST_PICKLE = env_bool("REGISTRY_TRUST_PICKLE", False)
    REGISTRY_REQUEST_TTL_HOURS = env_int("REGISTRY_REQUEST_TTL_HOURS", 72, minimum=1)
    # Webhooks and Slack never reach loopback, link-local or private addresses unless allowed (tests, closed networks).
    WEBHOOK_ALLOW_PRIVATE = env_bool("WEBHOOK_ALLOW_PRIVATE", False)
    WEBHOOK_ALLOWED_HOSTS = env_list("WEBHOOK_ALLOWED_HOSTS")
    WEBHOOK_TIMEOUT_SECONDS = env_int("WEBHOOK_TIMEOUT_SECONDS", 10, minimum=1, maximum=120)
    # How long a worker holds a delivery it claimed; a worker that dies leaves it to the sweep after this.
    NOTIFICATIONS_CLAIM_LEASE_SECONDS = env_int("NOTIFICATIONS_CLAIM_LEASE_SECONDS", 300, minimum=1)
    # Deployments (docs/deployments.md). Model servers ship prediction events to CONSOLE_INTERNAL_URL.
    CONSOLE_INTERNAL_URL = env_str("CONSOLE_INTERNAL_URL", "http://127.0.0.1:8000").rstrip("/")
    DEPLOYMENTS_DEFAULT_BACKEND = env_str("DEPLOYMENTS_DEFAULT_BACKEND", "local")
    DEPLOYMENTS_STATE_DIR = Path(env_str("DEPLOYMENTS_STATE_DIR", str(VAR_DIR / "deployments")))
    DEPLOYMENTS_RECONCILE_SECONDS = env_int("DEPLOYMENTS_RECONCILE_SECONDS", 10, minimum=1)
    DEPLOYMENTS_MAX_REPLICAS = env_int("DEPLOYMENTS_MAX_REPLICAS", 10, minimum=1, maximum=100)
    DEPLOYMENTS_MAX_REPLICAS_KUBERNETES = env_int("DEPLOYMENTS_MAX_REPLICAS_KUBERNETES", 100, minimum=1, maximum=1000)
    DEPLOYMENTS_SERVER_WORKERS = env_int("DEPLOYMENTS_SERVER_WORKERS", 1, minimum=1, maximum=64)
    DEPLOYMENTS_CANARY_STEPS = [int(step) for step in env_list("DEPLOYMENTS_CANARY_STEPS", ["10", "25", "50", "100"])]
    DEPLOYMENTS_CANARY_WINDOW_SECONDS = env_int("DEPLOYMENTS_CANARY_WINDOW_SECONDS", 60, minimum=1)
    DEPLOYMENTS_CANARY_MIN_REQUESTS = env_int("DEPLOYMENTS_CANARY_MIN_REQUESTS", 50, minimum=1)
    DEPLOYMENTS_AUTOSCALE_TARGET_RPS = env_int("DEPLOYMENTS_AUTOSCALE_TARGET_RPS", 50, minimum=1)
    DEPLOYMENTS_AUTOSCALE_COOLDOWN_SECONDS = env_int("DEPLOYMENTS_AUTOSCALE_COOLDOWN_SECONDS", 60, minimum=0)
    DEPLOYMENTS_DOCKER_URL = env_str("DEPLOYMENTS_DOCKER_URL")
    DEPLOYMENTS_DOCKER_BASE_IMAGE = env_str("DEPLOYMENTS_DOCKER_BASE_IMAGE", "python:3.11-slim")
    DEPLOYMENTS_KUBE_NAMESPACE = env_str("DEPLOYMENTS_KUBE_NAMESPACE", "default")
    DEPLOYMENTS_KUBE_IMAGE = env_str("DEPLOYMENTS_KUBE_IMAGE", "mlops-model-server:latest")
    DEPLOYMENTS_KUBE_CONSOLE_NAMESPACE = env_str("DEPLOYMENTS_KUBE_CONSOLE_NAMESPACE", "mlops")
    if DEPLOYMENTS_DEFAULT_BACKEND not in {"local", "docker", "kubernetes"}:
        raise EnvError("DEPLOYMENTS_DEFAULT_BACKEND must be local, docker or kubernetes")
    # Monitoring (docs/monitoring.md): how often, and over how long a window, beat runs each deployment's drift report.
    MONITORING_DRIFT_INTERVAL_SECONDS = env_int("MONITORING_DRIFT_INTERVAL_SECONDS", 3600, minimum=60)
    # The bearer token Prometheus sends to /metrics; empty: /metrics answers loopback requests only.
    METRICS_TOKEN = env_str("METRICS_TOKEN")
    # A/B tests (docs/abtests.md): how often beat computes a readout of every running test.
    ABTESTS_READOUT_INTERVAL_SECONDS = env_int("ABTESTS_READOUT_INTERVAL_SECONDS", 3600, minimum=60)
    # Alerts (docs/alerts.md): how often beat evaluates the rules; a rule's `for` is 0 or at least this.
    ALERTS_EVALUATION_INTERVAL_SECONDS = env_int("ALERTS_EVALUATION_INTERVAL_SECONDS", 30, minimum=5, maximum=3600)
except EnvError as exc:
    raise ImproperlyConfigured(str(exc)) from None

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "apps.core",
    "apps.telemetry",
    "apps.datasets",
    "apps.experiments",
    "apps.registry",
    "apps.deployments",
    "apps.monitoring",
    "apps.abtests",
    "apps.alerts",
    "axes",
]

MIDDLEWARE = [
    # First, so that every answer (redirects and refusals too) carries the request id and every log line has it.
    "mlops_console.logs.RequestIdMiddleware",
    # Counts every request for /metrics (apps/monitoring/metrics.py), including those refused further down.
    "apps.monitoring.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "apps.core.middleware.RequestContextMiddleware",
    "apps.core.middleware.DomainErrorMiddleware",
    # Last, as django-axes requires: it turns a sign-in refused for lockout into its 429 answer.
    "axes.middleware.AxesMiddleware",
]

# Every password check (the login page, the admin's login) passes django-axes first; bad API tokens are
# counted by apps.core.authentication. Locks are per username and per client address, so neither guessing
# one account from many addresses nor trying many accounts from one address gets past LOGIN_FAILURE_LIMIT.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_COOLOFF_TIME = timedelta(seconds=LOGIN_COOLOFF_SECONDS)
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_CLIENT_IP_CALLABLE = "apps.core.authentication.client_ip"
AXES_LOCKOUT_CALLABLE = "apps.core.authentication.lockout_response"
# Failures are what the lockout needs; a row per successful sign-in would only grow.
AXES_DISABLE_ACCESS_LOG = True

ROOT_URLCONF = "mlops_console.urls"
WSGI_APPLICATION = "mlops_console.wsgi.application"

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
                "apps.core.context_processors.navigation",
            ],
        },
    },
]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "core:home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env_str("STATIC_ROOT", str(VAR_DIR / "static")))
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# Uploads stream to a temporary file while being hashed; nothing large is held in memory.
FILE_UPLOAD_HANDLERS = ["apps.core.uploads.HashingUploadHandler"]
FILE_UPLOAD_TEMP_DIR = str(ARTIFACT_ROOT / "tmp")
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

SESSION_COOKIE_SECURE = not DEBUG
CSRF_COOKIE_SECURE = not DEBUG
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE_HSTS_SECONDS > 0
SECURE_HSTS_PRELOAD = SECURE_HSTS_SECONDS > 0
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
if SECURE_BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

REST_FRAMEWORK = {
    # Token auth comes first so that anonymous API calls get 401 with a WWW-Authenticate header.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "apps.core.authentication.APITokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "apps.core.api_pagination.Pagination",
    # Lists filter through one strict FilterSet each (apps/<app>/filters.py), shared with their HTML page.
    "DEFAULT_FILTER_BACKENDS": ["apps.core.filters.StrictFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "apps.core.api_errors.exception_handler",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "MLOps console API",
    "DESCRIPTION": "Datasets, experiments, registry, deployments, A/B tests and monitoring.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "DatasetVersionStatusEnum": "apps.datasets.choices.DatasetVersionStatus",
        "RunStatusEnum": "apps.experiments.choices.RunStatus",
        "RunEndStatusEnum": "apps.experiments.choices.RUN_END_CHOICES",
        "PipelineRunStatusEnum": "apps.experiments.choices.PipelineRunStatus",
        "PipelineStageStatusEnum": "apps.experiments.choices.PipelineStageStatus",
        "StudyStatusEnum": "apps.experiments.choices.StudyStatus",
        "ModelVersionStageEnum": "apps.registry.choices.ModelVersionStage",
        "PromotionRequestStatusEnum": "apps.registry.choices.PromotionRequestStatus",
        "DeliveryStatusEnum": "apps.core.notifications.choices.DeliveryStatus",
        "RegistryEventTypeEnum": "apps.registry.choices.RegistryEventType",
        "DriftReferenceSourceEnum": "apps.monitoring.choices.ReferenceSource",
        "NotificationChannelEnum": "apps.core.notifications.choices.NotificationChannel",
        "AlertStateEnum": "apps.alerts.choices.AlertState",
        "AlertNotificationKindEnum": "apps.alerts.choices.AlertNotificationKind",
    },
}

CELERY_BROKER_TRANSPORT_OPTIONS = (
    {
        "data_folder_in": str(VAR_DIR / "broker" / "out"),
        "data_folder_out": str(VAR_DIR / "broker" / "out"),
        "processed_folder": str(VAR_DIR / "broker" / "processed"),
        "control_folder": str(VAR_DIR / "broker" / "control"),
        "store_processed": False,
    }
    if CELERY_BROKER_URL.startswith("filesystem")
    else {"visibility_timeout": CELERY_VISIBILITY_TIMEOUT}
)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# The worker logs through LOGGING above (LOG_FORMAT, the request id of the task's request), not Celery's own format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_SOFT_TIME_LIMIT = 3600
CELERY_TASK_TIME_LIMIT = 3900
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    # Dataset versions whose profiling message was lost, or whose worker died, are queued again.
    "datasets-requeue-stale-versions": {"task": "datasets.requeue_stale_versions", "schedule": 300.0},
    # Fails pipeline stages and HPO trials whose worker died (see docs/experiments.md, "Reliability").
    "experiments-reap-stale": {"task": "experiments.reap_stale", "schedule": 30.0},
    "registry-expire-requests": {"task": "registry.promotion_requests_expire", "schedule": 300.0},
    "registry-dispatch-stragglers": {"task": "registry.events_dispatch_pending", "schedule": 120.0},
    # Sends due notification deliveries: retries, lost queue messages, deliveries of dead workers.
    "notifications-deliver-due": {"task": "notifications.deliver_due", "schedule": 30.0},
    # Makes every deployment's backend match its desired state; notices dead model servers.
    "deployments-reconcile": {"task": "deployments.reconcile_all", "schedule": float(DEPLOYMENTS_RECONCILE_SECONDS)},
    # Deletes prediction rows and rollups past their project's retention (docs/telemetry.md).
    "telemetry-retention": {"task": "telemetry.retention_apply", "schedule": 3600.0},
    # A drift report of the last interval per running deployment with traffic (docs/monitoring.md).
    "monitoring-drift-reports": {
        "task": "monitoring.drift_reports_schedule",
        "schedule": float(MONITORING_DRIFT_INTERVAL_SECONDS),
    },
    # A worker's and beat's sign of life for the system health page (apps/monitoring/health.py).
    "monitoring-heartbeat": {"task": "monitoring.heartbeat", "schedule": 30.0},
    # Sends drift reports whose task was lost or whose worker died again.
    "monitoring-requeue-stale": {"task": "monitoring.drift_reports_requeue_stale", "schedule": 300.0},
    # A readout of every running A/B test, one more point of its cumulative lift (docs/abtests.md).
    "abtests-readouts": {"task": "abtests.readouts_refresh", "schedule": float(ABTESTS_READOUT_INTERVAL_SECONDS)},
    # Evaluates the alert rules that are due (docs/alerts.md).
    "alerts-evaluate": {"task": "alerts.evaluate_due", "schedule": float(ALERTS_EVALUATION_INTERVAL_SECONDS)},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "mlops_console.logs.ContextFilter"}},
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s"},
        "json": {"()": "mlops_console.logs.json_formatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["context"]}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
