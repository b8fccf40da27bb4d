"""The ModelFleet runtime: a multi-model, dynamic-batching OIP inference server.

Importing this package must stay cheap and torch-free: the forward process's
child imports its modules before torch, once it has set its CPUs and allocator.
"""
