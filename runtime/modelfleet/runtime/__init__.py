"""The ModelFleet runtime: a multi-model, dynamic-batching OIP inference server.

Importing this package must stay cheap and torch-free: the gateway lives in
``modelfleet.runtime.gateway`` and never imports torch.
"""
