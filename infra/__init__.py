"""The CDK app that deploys a Simple Enclave service (needs the ``infra`` extra)."""
