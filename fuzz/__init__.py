"""API fuzzing: schemathesis against every listener of a running `enclave dev` (``tox -e fuzz``).

Not part of the py3 suite: it needs schemathesis and a few minutes, so it runs in its own tox env.
"""
