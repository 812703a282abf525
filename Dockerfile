# imagefit in a container, e.g. to serve an exported run:
#   docker build -t imagefit .
#   docker run --rm -p 8000:8000 -v "$PWD/runs/demo:/model:ro" imagefit serve /model --host 0.0.0.0
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
# CPU-only PyTorch wheels: the image serves with ONNX Runtime and needs no CUDA libraries.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch torchvision
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && useradd --create-home imagefit
USER imagefit
EXPOSE 8000
# exec form: SIGTERM from `docker stop` reaches the server, which drains before exiting
ENTRYPOINT ["imagefit"]
CMD ["--help"]
