# The one entry point: `make demo` and `make test` set everything up from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

# A bank's node does not phone out: Flower's telemetry and update check stay off everywhere.
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_HOME ?= $(CURDIR)/.flwr

PROTOS := $(wildcard proto/cobrand/v1/*.proto)
GENERATED := $(patsubst proto/%.proto,%_pb2.py,$(PROTOS))

.PHONY: install proto lint typecheck test demo bench clean

install: $(VENV)/.installed proto

# torch first, from the machine's local CPU wheel, so nothing pulls a CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test,dev]'
	touch $@

proto: $(GENERATED)

cobrand/v1/%_pb2.py: proto/cobrand/v1/%.proto $(VENV)/.installed
	mkdir -p cobrand/v1 && touch cobrand/v1/__init__.py
	$(BIN)/python -m grpc_tools.protoc -I proto --python_out=. --grpc_python_out=. --pyi_out=. $<

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest -q

demo: install
	$(BIN)/cobrand demo

# openmined-psi (the PSI benchmark's baseline) pins protobuf 6.30 but runs on 6.33: no deps.
bench: install
	$(BIN)/pip install -q -e '.[bench]'
	$(BIN)/pip install -q --no-deps openmined-psi==2.0.6
	$(BIN)/python -m bench.synth
	$(BIN)/python -m bench.dataplane
	$(BIN)/python -m bench.quality
	$(BIN)/python -m bench.psi --sizes 100000
	$(BIN)/python -m bench.training_time
	$(BIN)/python -m bench.cached_embeddings
	$(BIN)/python -m bench.embedding_lookup
	$(BIN)/python -m bench.consented_lookup
	$(BIN)/python -m bench.audit_log
	$(BIN)/python -m bench.targeting
	$(BIN)/python -m bench.scoring_path
	$(BIN)/python -m bench.gateway_load

clean:
	rm -rf $(VENV) cobrand/v1 .flwr .mypy_cache .pytest_cache .ruff_cache
