# Every target does its own set-up on a fresh machine and reuses what is already there.
SHELL := /bin/bash
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: help venv proto proto-check crds crds-check assets gitlab-peers flux image system-deps lint test test-unit test-integration mutation demo clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(VENV_STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

venv: $(VENV_STAMP)  ## virtualenv with pinned dependencies

system-deps:  ## Debian packages the tests and the demo use (redis-server; openssl for the test cluster's keys; prometheus + promtool for tests/monitoring)
	@command -v redis-server >/dev/null && command -v openssl >/dev/null && command -v promtool >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server openssl prometheus >/dev/null; }

assets:  ## build (or reuse) kube-apiserver + etcd from Go modules into .cache/k8s-assets
	scripts/k8s-assets

gitlab-peers:  ## build (or reuse) GitLab's own kas and agentk, the interop test peers, into .cache/gitlab-peers
	scripts/gitlab-peers

flux:  ## build (or reuse) Flux's source-controller and kustomize-controller, the GitOps test peers, into .cache/flux
	scripts/flux-controllers

image:  ## build the operator image (podman, or docker with a daemon); prints its tag last
	scripts/image

proto: venv  ## regenerate the Python code from agent_proto's .proto files
	$(PY) scripts/gen-proto

proto-check: proto  ## fail if regenerating the protobuf code changes anything (also new, uncommitted files)
	@test -z "$$(git status --porcelain -- agent_proto)" || { git status --short -- agent_proto; echo "generated code is stale: run make proto and commit" >&2; exit 1; }

crds: venv  ## regenerate crds/ (the GitLabAgent CRD) from the pydantic models in agent_operator/api
	$(PY) scripts/gen-crd

crds-check: venv  ## fail if crds/ differs from what the models generate
	$(PY) scripts/gen-crd --check

lint: venv  ## ruff, mypy --strict, import-linter
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy .
	.venv/bin/lint-imports

test: venv system-deps  ## the whole suite: lint, generated-code check, unit + integration + e2e tests
	$(MAKE) --no-print-directory proto-check crds-check lint
	KUBEBUILDER_ASSETS="$${KUBEBUILDER_ASSETS:-$$(scripts/k8s-assets | tail -1)}" \
	  PATH="$(CURDIR)/.venv/bin:$$PATH" $(PY) -m pytest -q -p no:cacheprovider

test-unit: venv  ## unit tests only (no servers)
	$(PY) -m pytest -q tests/unit

mutation: venv system-deps  ## mutation testing (cosmic-ray) where a silent break is worst; MODULES=... for some (docs/testing.md)
	scripts/mutation/run $(MODULES)

demo: venv system-deps  ## local demo: apiserver + Redis + kas + operator + sample agent, then kubectl through the tunnel; KAS=gitlab: GitLab's kas with a configuration repository
	KUBEBUILDER_ASSETS="$${KUBEBUILDER_ASSETS:-$$(scripts/k8s-assets | tail -1)}" \
	  PATH="$(CURDIR)/.venv/bin:$$PATH" $(PY) scripts/demo.py --kas $(or $(KAS),reference)

clean:  ## remove the virtualenv and caches (keeps the built k8s assets)
	rm -rf .venv .mypy_cache .ruff_cache .pytest_cache
