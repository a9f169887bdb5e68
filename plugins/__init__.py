"""Built-in Simple Enclave backends.

Each module here is one backend, loaded through the ``enclave`` entry-point group exactly like a
third-party plugin. Nothing is imported or registered from this package's ``__init__``.
"""
