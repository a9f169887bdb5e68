"""The host supervisor (README: Supervisor management API).

``service`` runs everything in one event loop: the management API (``api``, with ``prometheus``
for ``/metrics`` and ``token`` for mutating calls), exactly one ``watchdog``, the ingress
``forwarders``, the egress proxy and IMDS forwarder, and migrations (``migration/``).
``runtime_client`` talks to the runtime's listeners; the CLI's side of the management API is
:mod:`enclave_core.cli.supervisor_client`.
"""
