"""Byte streams: addresses and vsock, splicing, the log channel and the enclave's host bridges."""
