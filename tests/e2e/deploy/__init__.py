"""`enclave deploy`, `status --cloud` and `destroy` end to end: the real cdk CLI against a patched
moto server, whose Run Command runs the scripts on fake EC2 hosts (``tox -e deploy``)."""
