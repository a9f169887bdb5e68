"""What every contract class shares: how the backend under test is built.

Set ``backend_class`` (and override ``backend_options`` if it needs options) to have it built as
the core builds it, or override the ``backend`` fixture. ``make_backend(**context_fields)``
builds further instances over the same store; checks that need it skip without ``backend_class``.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import pytest

from enclave_core.plugin.interfaces import BackendContext

#: Threads racing for one conditional write.
RACERS = 8


def race(workers: int, attempt: Callable[[int], Any]) -> list[Any]:
    """Run ``attempt(i)`` in ``workers`` threads released together; return results or errors."""
    barrier = threading.Barrier(workers)
    results: list[Any] = [None] * workers

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = attempt(index)
        except Exception as exc:  # the outcome under test
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results


class BackendContract:
    """Base of :class:`StorageContract`, :class:`SecretsContract` and :class:`KmsContract`."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.enclave_contract]

    #: The backend class under test (``name``, ``Options``, ``from_options``), or None when the
    #: subclass overrides the ``backend`` fixture instead.
    backend_class: ClassVar[type[Any] | None] = None
    #: The Protocol the backend implements (set by each contract).
    protocol: ClassVar[type[Any]]

    @pytest.fixture
    def backend_options(self) -> dict[str, Any]:
        """The ``options:`` block the backend is built with (before its schema loads it)."""
        return {}

    @pytest.fixture
    def make_backend(
        self,
        backend_options: dict[str, Any],
        enclave_context_factory: Callable[..., BackendContext],
    ) -> Callable[..., Any]:
        """Build ``backend_class`` from ``backend_options``: ``make_backend(**context_fields)``."""
        cls = self.backend_class
        if cls is None:
            pytest.skip("needs backend_class (this contract subclass only overrides `backend`)")

        def make(**context_fields: Any) -> Any:
            options = cls.Options().load(dict(backend_options))
            return cls.from_options(options, enclave_context_factory(**context_fields))

        return make

    @pytest.fixture
    def backend(self, request: pytest.FixtureRequest) -> Any:
        """The backend under test: built from ``backend_class``, or given by the subclass."""
        if self.backend_class is None:
            pytest.fail(
                f"{type(self).__name__}: set `backend_class = YourBackend` or override the "
                "`backend` fixture to say which backend the contract checks",
                pytrace=False,
            )
        make: Callable[..., Any] = request.getfixturevalue("make_backend")
        return make()

    # ------------------------------------------------------------------ every backend class

    def test_backend_is_an_instance_of_the_protocol(self, backend: Any) -> None:
        assert isinstance(backend, self.protocol), (
            f"{type(backend).__name__} lacks a method of {self.protocol.__name__}"
        )

    def test_backend_class_has_a_name_options_and_from_options(self, backend: Any) -> None:
        import marshmallow

        cls = type(backend)
        assert isinstance(cls.name, str) and cls.name, "the class needs a non-empty `name`"
        assert isinstance(getattr(cls, "Options", None), type), "the class needs an `Options`"
        assert issubclass(cls.Options, marshmallow.Schema), "`Options` must be a marshmallow Schema"
        factory = inspect.getattr_static(cls, "from_options", None)
        assert isinstance(factory, classmethod), "`from_options` must be a classmethod"


def has_parameter(method: Callable[..., Any], name: str) -> bool:
    """Whether ``method`` accepts a keyword argument ``name`` (optional parts of a Protocol)."""
    try:
        parameters = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
