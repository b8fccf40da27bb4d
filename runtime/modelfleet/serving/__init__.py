"""What the runtime and the gateway share as HTTP servers: errors that carry their
status, the admin bearer token, the command line's server flags, the event loop,
and start-up and graceful shutdown of their listening sites.

It never imports torch, the runtime nor the gateway: an import-linter contract
proves it.
"""
