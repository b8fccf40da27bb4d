# The local Kubernetes control plane (tests/cluster): included by the root Makefile.
.PHONY: cluster-build cluster-up cluster-down

cluster-build:
	@bash tests/cluster/build.sh >/dev/null

cluster-up: venv cluster-build
	@$(PYTHON) -m tests.cluster.controlplane up

cluster-down: venv
	@$(PYTHON) -m tests.cluster.controlplane down
