"""The host supervisor (README: Supervisor management API).

``service`` runs everything in one event loop: the management API (``api``, with ``promexport``
for ``/metrics`` and ``token`` for mutating calls), exactly one ``watchdog``, and the ingress
``forwarders``. ``runtime_client`` talks to the runtime's listeners; ``client`` is the CLI's side
of the management API.
"""
