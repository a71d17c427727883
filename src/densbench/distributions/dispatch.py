"""Dispatch of the operations on predictive distributions: a registry per operation from types to closed
forms, filled the way ``torch.distributions.register_kl`` is (next to each type, by dotted name so that
registering needs no torch), resolved on first use along the class hierarchy; and the record of which
generic methods a computation fell back on."""

from __future__ import annotations

import importlib
from contextlib import contextmanager
from typing import Any, Callable, Iterator


class Unavailable(NotImplementedError):
    """Neither a closed form nor a generic method exists for this distribution."""


_FALLBACKS: list[dict[str, str]] = []


@contextmanager
def recording_fallbacks() -> Iterator[dict[str, str]]:
    """Collect {operation: "method (Type)"} for every generic method used inside the block."""
    used: dict[str, str] = {}
    _FALLBACKS.append(used)
    try:
        yield used
    finally:
        _FALLBACKS.remove(used)


def _resolve(name: str) -> type:
    module, _, attr = name.rpartition(".")
    return getattr(importlib.import_module(module), attr)


class Operation:
    """One operation: a registry from types to closed forms, and an optional generic method."""

    def __init__(self, name: str, generic: Callable | None = None, generic_name: str = "") -> None:
        self.name, self.generic, self.generic_name = name, generic, generic_name
        self._impls: dict[type, Callable] = {}
        self._pending: list[tuple[str, Callable]] = []
        self._names: dict[type, str] = {}  # the dotted names pending registrations were made under
        self._not_differentiable: set[str] = set()

    def register(self, *types: type | str, differentiable: bool = True) -> Callable[[Callable], Callable]:
        """Decorator: `fn` is the closed form of this operation for these types (or dotted type names);
        `differentiable=False` where autograd cannot pass through it (e.g. torch's incomplete gamma in its
        shape), so that an objective training on it refuses the family while metrics still use it."""

        def deco(fn: Callable) -> Callable:
            if not differentiable:
                self._not_differentiable.update(t if isinstance(t, str) else f"{t.__module__}.{t.__qualname__}" for t in types)
            for t in types:
                if isinstance(t, str):
                    self._pending.append((t, fn))
                else:
                    self._impls[t] = fn
            return fn

        return deco

    def registered(self, type_name: str, differentiable: bool = False) -> bool:
        """Whether a closed form is registered for the type of this dotted name, asked before torch is imported.

        Answers from the registrations by name that the family modules make (they import no torch), so
        it knows a family's distribution only by the name its module registers it under; `differentiable`
        asks for a closed form autograd can train through.
        """
        importlib.import_module(FAMILY_REGISTRAR).load_all()  # by name: this module imports none of its registrars
        if differentiable and type_name in self._not_differentiable:
            return False
        return any(name == type_name for name, _ in self._pending) or type_name in self._names.values()

    def closed_form(self, cls: type) -> Callable | None:
        """The registered implementation for `cls` (or its nearest base class), if any."""
        _load_registrations()
        if self._pending:
            pending, self._pending = self._pending, []
            for name, fn in pending:
                resolved = _resolve(name)
                self._impls[resolved], self._names[resolved] = fn, name
        for base in cls.__mro__:
            if base in self._impls:
                return self._impls[base]
        return None

    def __call__(self, dist: Any, *args: Any, **kwargs: Any) -> Any:
        fn = self.closed_form(type(dist))
        if fn is not None:
            return fn(dist, *args, **kwargs)
        if self.generic is None:
            raise Unavailable(f"no {self.name} for {type(dist).__name__}")
        return self.generic(dist, *args, **kwargs)


def note(op: str, how: str, dist: Any) -> None:
    """Record that operation `op` used its generic method `how` for this distribution (see recording_fallbacks)."""
    for used in _FALLBACKS:
        used.setdefault(op, f"{how} ({type(dist).__name__})")


_LOADED = False


# the modules that register closed forms (every family module, through its package's registry, and the
# distribution classes densbench defines): discovered by name on the first dispatch, as plugins are, so
# that this module, which they all import, imports none of them
FAMILY_REGISTRAR = "densbench.distributions.families"
REGISTRARS = ("densbench.distributions.classes", "densbench.distributions.mixtures", FAMILY_REGISTRAR)


def _load_registrations() -> None:
    """Import the registering modules once (every family module through the families registry)."""
    global _LOADED
    if not _LOADED:
        _LOADED = True
        for name in REGISTRARS:
            module = importlib.import_module(name)
            getattr(module, "load_all", lambda: None)()
