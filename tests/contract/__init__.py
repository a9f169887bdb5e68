"""The backend contract suite (enclave_core.testing.contracts) run on every built-in backend."""
