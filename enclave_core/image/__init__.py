"""Images: which one the enclave runs, the files that make one, and development snapshots."""
