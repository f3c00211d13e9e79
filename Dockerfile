FROM python:3.11-slim-bookworm
RUN apt-get update \
 && apt-get install -y --no-install-recommends gnupg openssh-client \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY dataflow ./dataflow
COPY blocks ./blocks
RUN pip install --no-cache-dir .
RUN useradd --create-home dataflow
USER dataflow
ENV DATAFLOW_STATE_DIR=/state
ENTRYPOINT ["dataflow"]
CMD ["schedule", "/configs"]
