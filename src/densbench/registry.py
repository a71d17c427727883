"""A registry of classes by name, filled by the modules of one package (torch-free).

Families and objectives are found the same way: every module of their package is imported once, and
each registers its classes with a decorator. Adding one is adding a module; nothing lists them.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Classes by their `name`, from the modules of `package` (all but `skip`)."""

    def __init__(self, package: str, kind: str, check: Callable[[type], None] | None = None, skip: tuple[str, ...] = ("base",)):
        self.package, self.kind, self.check, self.skip = package, kind, check, skip
        self._classes: dict[str, type[T]] = {}
        self._loaded = False

    def register(self, cls: type[T]) -> type[T]:
        """Class decorator: add `cls` under its `name`."""
        if not getattr(cls, "name", ""):
            raise TypeError(f"{cls.__name__} needs a `name`")
        if self.check is not None:
            self.check(cls)
        self._classes[cls.name] = cls
        return cls

    def load_all(self) -> dict[str, type[T]]:
        """Import every module of the package once; returns the classes by name."""
        if not self._loaded:
            package = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(package.__path__):
                if info.name not in self.skip:
                    importlib.import_module(f"{self.package}.{info.name}")
            self._loaded = True
        return dict(self._classes)

    def get(self, name: str) -> type[T]:
        """The class registered under `name`."""
        classes = self.load_all()
        if name not in classes:
            raise KeyError(f"no {self.kind} {name!r}; registered: {', '.join(sorted(classes))}")
        return classes[name]
