# syntax=docker/dockerfile:1
# The operator image: `scripts/image` (or `docker build -t gitlab-agent-operator:0.1.0 .`)
# Two layers on top of a slim Python: the pinned dependencies in a venv (about 150 MB, changes only with
# constraints.txt) and this project's packages in /opt/app (about 2 MB), so a release or a source edit
# ships and rebuilds 2 MB, not the whole venv. The runtime stages reuse the builder's base, so the venv's
# interpreter links stay valid.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, in their own layer (pinned by constraints.txt): source edits do not re-download them.
# The kubernetes client's asyncio copy `kubernetes.aio` goes at once (about 70 MB with its bytecode; the
# operator uses the synchronous client's kubeconfig loading only, agent_runtime/kube.py, kas/kube_client.py).
# The build backend ([build-system] requires) is installed here too, so building the wheel below needs no
# network and no isolated build environment.
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
      > /tmp/requirements.txt \
 && python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'], sep='\n')" \
      > /tmp/build-requirements.txt \
 && /opt/venv/bin/pip install --upgrade pip \
 && /opt/venv/bin/pip install -c constraints.txt -r /tmp/requirements.txt -r /tmp/build-requirements.txt \
 && rm -rf /opt/venv/lib/python3*/site-packages/kubernetes/aio

# The runtime's venv: the dependencies without pip and setuptools (the runtime installs nothing), and a
# .pth line that puts /opt/app on the path.
FROM builder AS venv
RUN /opt/venv/bin/pip uninstall --yes --quiet pip setuptools \
 && rm -f /opt/venv/bin/pip* /opt/venv/bin/easy_install* \
 && echo /opt/app > "$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/gitlab-agent-operator-app.pth"

# This project's wheel, installed into /opt/app (its console scripts in /opt/app/bin run /opt/venv's python).
FROM builder AS app
COPY . .
RUN /opt/venv/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
 && /opt/venv/bin/pip install --no-deps --target /opt/app /wheels/*.whl

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/app/bin:/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=venv /opt/venv /opt/venv
COPY --from=app /opt/app /opt/app
# The image as it runs: every module the entry point loads imports, from /, without pip or setuptools.
RUN cd / && python -c "import agent_operator.__main__, agent_operator.api, agent_runtime.kube, kas.kube_client" \
 && test "$(command -v gitlab-agent-operator)" = /opt/app/bin/gitlab-agent-operator
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
