"""Test doubles: stand-ins for what the product talks to, shared by the tests of every folder.

- :mod:`~tests.doubles.memory_backends`: in-memory storage, secrets, KMS and NSM backends (real
  crypto, kept in memory) and ``DoublesPlugin``, which registers them as ``testmem``; its own
  tests are ``test_memory_backends.py`` beside it.
- :mod:`~tests.doubles.appapi_server`: the runtime's real app API served on loopback over the
  in-memory backends, for the app client and the example apps.
- :mod:`~tests.doubles.fake_enclave`: a scriptable HTTPS "enclave" for `enclave verify`, each of
  its answers able to misbehave.
- :mod:`~tests.doubles.fake_supervisor`: a stand-in supervisor management API (canned answers,
  recorded requests) for the CLI's tests.
- :mod:`~tests.doubles.nsm_device`: a fake ``/dev/nsm`` ``ioctl`` that plays the kernel driver.
- :mod:`~tests.doubles.stubbed_aws`: botocore-stubbed AWS, a fake CDK synth, a fake clock and a
  production config, for `enclave deploy`, `destroy` and `status --cloud`.
- :mod:`~tests.doubles.host_tools`: puts the fake ``cdk``, ``docker`` and ``nitro-cli`` of
  ``tools/`` (executable scripts; ``fake_eif.py`` is the nitro-cli's EIF format) on PATH and reads
  their state.

Servers the tests run for real (moto, the KMS Recipient shim) are in :mod:`tests.services`.
"""
