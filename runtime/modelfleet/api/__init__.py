"""The contracts between ModelFleet's components, in one torch-free place.

* :mod:`modelfleet.api.headers` -- the ``X-ModelFleet-*`` HTTP headers the gateway
  and the runtime exchange (documented in docs/contracts.md);
* :mod:`modelfleet.api.admin` -- a runtime's ``GET /admin/state`` answer, which the
  runtime builds and the operator reads;
* :mod:`modelfleet.api.runtime_document` -- a runtime's desired-state document
  (``RuntimeDocument``: ``server`` + ``models``), which the operator builds for each
  runtime pod and the runtime reads (``modelfleet.runtime.config`` re-exports it);
* :mod:`modelfleet.api.routes` -- the gateway's routes document, which the operator
  builds with these models and the gateway reads.
* :mod:`modelfleet.api.request_parameters` -- where Triton's ``priority`` and
  ``timeout`` are found in a raw REST body, by the runtime and the gateway alike.

Every component may import this package; it imports none of them.
"""
