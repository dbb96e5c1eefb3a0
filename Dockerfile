# The console image: web (gunicorn), Celery worker and beat all run from it (see docker-compose.yml).
# The base image is a build argument so that air-gapped sites can point it at their own mirror.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    STATIC_ROOT=/app/staticfiles

# libgomp is needed by XGBoost and scikit-learn; curl by the health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 curl \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system mlops && useradd --system --gid mlops --home-dir /app --shell /usr/sbin/nologin mlops
WORKDIR /app

COPY requirements.txt .
# The CPU build of torch: the default index would pull a multi-GB CUDA build.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.txt

COPY --chown=mlops:mlops . .
RUN DEBUG=0 SECRET_KEY=collectstatic-only VAR_DIR=/tmp/var python manage.py collectstatic --noinput -v0 \
 && mkdir -p /data && chown mlops:mlops /data

USER mlops
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 CMD curl -fsS http://127.0.0.1:8000/healthz || exit 1
CMD ["gunicorn", "mlops_console.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--timeout", "120", "--access-logfile", "-"]
