FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY actors actors
COPY domain domain
COPY ingress ingress
COPY offload offload
COPY scheduling scheduling
COPY store store
RUN pip install --no-cache-dir .
ENTRYPOINT ["offload"]
