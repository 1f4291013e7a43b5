# syntax=docker/dockerfile:1
# The operator image: `scripts/image` (or `docker build -t gitlab-agent-operator:0.1.0 .`)
# Builder: build this project's wheel and install it, with pinned dependencies, into a venv.
# Runtime: the same slim Python (so the venv's interpreter links stay valid) plus that venv, nothing else.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, in their own layer (pinned by constraints.txt): source edits do not re-download them.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
      > /tmp/requirements.txt \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install -c constraints.txt -r /tmp/requirements.txt
COPY . .
# Then what the runtime never uses leaves the venv: pip and setuptools (it installs nothing), and the
# kubernetes client's asyncio copy `kubernetes.aio` (about 70 MB with its bytecode; the operator uses the
# synchronous client in agent_runtime/kube.py and kas/kube_client.py only). The import check runs last,
# from / so it loads the installed wheel, not /src, and covers every module the entry point loads.
RUN /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-deps /wheels/*.whl \
 && /opt/venv/bin/pip uninstall --yes --quiet pip setuptools \
 && rm -rf /opt/venv/bin/pip* /opt/venv/bin/easy_install* /opt/venv/lib/python3*/site-packages/kubernetes/aio \
 && cd / && /opt/venv/bin/python -c "import agent_operator.__main__, agent_operator.api, agent_runtime.kube, kas.kube_client"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=builder /opt/venv /opt/venv
# The distroless "nonroot" uid/gid: no passwd entry needed, matches the Deployment's securityContext.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["gitlab-agent-operator"]

# Last, so a new commit only relabels the cached layers. Set by scripts/image: the version from
# pyproject.toml, the git commit and the repository's URL (when the clone has a remote).
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=""
LABEL org.opencontainers.image.title="gitlab-agent-operator" \
      org.opencontainers.image.description="Runs GitLab's agent for Kubernetes declaratively: GitLabAgent resources become tunnel workers" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
