FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TRACKER_STATE_DIR=/var/lib/tracker
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY tracker ./tracker
COPY alembic ./alembic
RUN pip install --no-cache-dir . && useradd --system --create-home tracker \
    && mkdir -p /var/lib/tracker && chown tracker /var/lib/tracker
USER tracker
CMD ["celery", "-A", "tracker", "worker", "--loglevel", "INFO"]
