"""What the enclave and its verifiers share: user_data, response signatures, the migration chain."""
