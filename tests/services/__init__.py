"""Services the tests start for real, beside the code under test.

- :mod:`~tests.services.moto_server`: one moto server per session, over real HTTP (fixtures
  ``moto_endpoint``, ``moto_reset``, ``boto3_session``; a pytest plugin of ``tests/conftest.py``).
- :mod:`~tests.services.kms_recipient_shim`: botocore hooks that give moto's KMS the Recipient
  flow, key policies, grants and key states of AWS KMS, in the test's own process.
- :mod:`~tests.services.kms_shim_server`: the same shim as an HTTP server in front of moto, for
  runtimes in their own process (fixture ``kms_shim_endpoint``; a pytest plugin as well).

Their own tests are ``test_kms_shim_server.py`` and ``test_kms_shim_grants.py`` beside them.
"""
