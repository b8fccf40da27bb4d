# `make kind-up`: ModelFleet on a local kind cluster (a laptop with Docker, kind,
# kubectl and helm). Included by the root Makefile. `make kind-down` deletes it.
KIND_CLUSTER ?= modelfleet
KIND_NAMESPACE ?= modelfleet
MODELFLEET_TAG ?= 0.1.0

.PHONY: kind-up kind-down

kind-up:
	kind get clusters | grep -qx '$(KIND_CLUSTER)' || kind create cluster --name '$(KIND_CLUSTER)'
	docker build -f Dockerfile.operator -t modelfleet/operator:$(MODELFLEET_TAG) .
	docker build -f Dockerfile.runtime -t modelfleet/runtime:$(MODELFLEET_TAG) .
	kind load docker-image --name '$(KIND_CLUSTER)' modelfleet/operator:$(MODELFLEET_TAG) modelfleet/runtime:$(MODELFLEET_TAG)
	kubectl --context 'kind-$(KIND_CLUSTER)' create namespace '$(KIND_NAMESPACE)' --dry-run=client -o yaml \
	  | kubectl --context 'kind-$(KIND_CLUSTER)' apply -f -
	kubectl --context 'kind-$(KIND_CLUSTER)' label namespace '$(KIND_NAMESPACE)' --overwrite \
	  pod-security.kubernetes.io/enforce=restricted
	helm upgrade --install modelfleet charts/modelfleet --kube-context 'kind-$(KIND_CLUSTER)' \
	  --namespace '$(KIND_NAMESPACE)' --wait \
	  --set operator.image.tag=$(MODELFLEET_TAG) --set runtime.image.tag=$(MODELFLEET_TAG)
	kubectl --context 'kind-$(KIND_CLUSTER)' -n '$(KIND_NAMESPACE)' apply -f samples/model-store.yaml
	kubectl --context 'kind-$(KIND_CLUSTER)' -n '$(KIND_NAMESPACE)' wait job/example-models --for=condition=Complete --timeout=10m
	kubectl --context 'kind-$(KIND_CLUSTER)' -n '$(KIND_NAMESPACE)' apply -f samples/pool.yaml -f samples/model.yaml
	@echo "kubectl --context kind-$(KIND_CLUSTER) -n $(KIND_NAMESPACE) get inferencepools,inferencemodels"

kind-down:
	kind delete cluster --name '$(KIND_CLUSTER)'
