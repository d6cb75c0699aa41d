# The simstream image: the `simstream` command (consumers, status, dlq) and the demo producer.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY common ./common
COPY producer ./producer
COPY consumer ./consumer
RUN pip install --no-cache-dir '.[postgres]'
ENTRYPOINT []
