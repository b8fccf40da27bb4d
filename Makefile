# ModelFleet: `make run` serves the example fleet, `make test` runs everything.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# The clone's environment, .venv: the project installed editable over a shared
# environment of its dependencies cached outside the clone (see scripts/venv.sh);
# evaluated in each recipe so that a fresh machine creates it on first use.
PYTHON = "$$(bash scripts/venv.sh)/bin/python"
export MODELFLEET_CACHE ?= $(HOME)/.cache/modelfleet

.PHONY: help venv lock run test lint unit crds protos bench bench-peers bench-operator gpu-check example-models images clean

help:
	@echo "make run        serve the example fleet locally (no cluster needed)"
	@echo "make test       lint, type-check and run the whole test suite"
	@echo "make lock       re-resolve pyproject.toml's dependency ranges into requirements.lock"
	@echo "make crds       regenerate crds/, the chart's copy and docs/reference.md from the spec models"
	@echo "make protos     regenerate the OIP gRPC messages from runtime/modelfleet/api/inference.proto"
	@echo "make bench      runtime, gateway and overload benchmarks (tables + PNG in bench-results/)"
	@echo "make bench-peers   the runtime against LitServe, MLServer and Ray Serve"
	@echo "make bench-operator   the operator's API requests and time to Ready (5 pools, 100 models)"
	@echo "make gpu-check  on a CUDA machine: the runtime's GPU tests (tests/gpu) and a short GPU bench"
	@echo "make cluster-up / cluster-down   a local Kubernetes control plane to poke at"
	@echo "make kind-up / kind-down   kind cluster + images + helm install + samples (needs Docker)"
	@echo "make images     build the runtime and operator images with podman (docs/containers.md)"

venv:
	@bash scripts/venv.sh >/dev/null

lock:
	@bash scripts/lock.sh

example-models: venv
	@$(PYTHON) -m modelfleet example-models --out var/models

run: venv example-models
	@$(PYTHON) -m modelfleet serve --config examples/fleet.yaml

lint: venv
	@echo "==> ruff"
	@$(PYTHON) -m ruff check runtime gateway operator tests bench
	@$(PYTHON) -m ruff format --check runtime gateway operator tests bench
	@echo "==> mypy (strict)"
	@$(PYTHON) -m mypy -p modelfleet -p modelfleet.operator -p modelfleet.gateway
	@echo "==> import contracts (the components stay apart; operator and gateway never import torch)"
	@# import-linter reads the sources as files: it is told where they are.
	@PYTHONPATH=runtime:gateway:operator $(PYTHON) -c 'import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())' pyproject.toml

unit: venv
	@$(PYTHON) -m pytest tests -m "not cluster and not integration"

# The images first (cached: seconds when nothing changed): the container and cluster
# tests run the pods' containers from them.
test: venv lint cluster-build images
	@echo "==> pytest (unit, integration, containers, cluster)"
	@$(PYTHON) -m pytest tests

# The CRDs, their copy in the chart and docs/reference.md are generated from the
# models in operator/modelfleet/operator/ (tests/operator/test_crdgen.py checks them).
crds: venv
	@$(PYTHON) -m modelfleet.operator.crdgen

# The OIP gRPC messages: runtime/modelfleet/api/inference.proto -> inference_pb2.py(i)
# (tests/test_protos.py checks that the committed files are what this writes).
protos: venv
	@$(PYTHON) -m grpc_tools.protoc -Iruntime --python_out=runtime --pyi_out=runtime \
		runtime/modelfleet/api/inference.proto
	@echo "wrote runtime/modelfleet/api/inference_pb2.py and inference_pb2.pyi"

bench: venv
	@$(PYTHON) -m bench.runtime_bench --models mlp,cnn,bert,resnet --out bench-results
	@$(PYTHON) -m bench.runtime_bench --cases cnn/binary,cnn/grpc --profiles thread --via-gateway --out bench-results
	@$(PYTHON) -m bench.gateway_bench --out bench-results
	@$(PYTHON) -m bench.overload_bench --out bench-results
	@$(PYTHON) -m bench.overload_bench --keepalive --out bench-results

bench-peers: venv
	@$(PYTHON) -m bench.peers_bench --out bench-results

bench-operator: venv cluster-build
	@$(PYTHON) -m bench.operator_bench --out bench-results

# On a machine with CUDA: tests/gpu (collected only here) and a short bench on the
# GPU, then a summary; without CUDA it exits non-zero and says what is missing.
gpu-check: venv
	@$(PYTHON) -m bench.gpu_check --out bench-results/gpu-check.json

# Both images, built with podman on this machine (no Docker engine needed), tagged as
# the chart names them; scripts/images.sh installs podman if missing (docs/containers.md).
images:
	@bash scripts/images.sh

clean:
	rm -rf var bench-results .mypy_cache .ruff_cache

-include tests/cluster/cluster.mk
-include charts/kind.mk
