"""The KMS key policy model: IAM evaluation, the canonical enclave policies and the key check."""
