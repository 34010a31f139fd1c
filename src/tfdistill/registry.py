"""A small name -> object registry with helpful errors, used for models, methods and datasets."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterable, Iterator, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions turning ``a`` into ``b``."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def closest(name: str, choices: Iterable[str], n: int = 1) -> list[str]:
    """Did-you-mean: up to ``n`` of ``choices`` close to ``name`` (those ``difflib`` finds close), nearest first by
    edit distance, then by ``difflib``'s similarity: ``resnet2O`` gives ``resnet20`` (one substitution) before
    ``resnet32`` (two), which ``difflib`` alone ranks equal and so puts first."""
    name = str(name)
    near = difflib.get_close_matches(name, list(choices), n=max(n, 20))
    score = {c: difflib.SequenceMatcher(None, name, c).ratio() for c in near}
    return sorted(near, key=lambda c: (edit_distance(name, c), -score[c], c))[:n]


class Registry(Generic[T]):
    """Maps names to objects (classes or factories).

    >>> MODELS = Registry("model")
    >>> @MODELS.register("resnet20")
    ... def resnet20(num_classes): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            key = name or getattr(obj, "__name__")
            for k in (key, *aliases):
                if k in self._items:
                    raise ValueError(f"{self.kind} {k!r} is registered twice")
                self._items[k] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        hint = closest(str(name), self._items)
        did = f" (did you mean {hint[0]!r}?)" if hint else ""
        return f"unknown {self.kind} {name!r}{did}; valid: {', '.join(self.names())}"

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
