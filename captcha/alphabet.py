"""Map label strings to class indices and back."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass


class LabelError(ValueError):
    """A label that does not fit the alphabet or the expected length."""


@dataclass(frozen=True)
class Alphabet:
    """An ordered set of symbols; index i of a head's output is `symbols[i]`."""

    symbols: str

    def __post_init__(self) -> None:
        if not self.symbols:
            raise LabelError("the alphabet is empty")
        if len(set(self.symbols)) != len(self.symbols):
            raise LabelError(f"the alphabet {self.symbols!r} repeats a symbol")

    @classmethod
    def from_labels(cls, labels: Iterable[str]) -> "Alphabet":
        """The sorted set of symbols used by `labels`."""
        return cls("".join(sorted(set("".join(labels)))))

    def __len__(self) -> int:
        return len(self.symbols)

    def unknown_symbols(self, text: str) -> str:
        """The symbols of `text` that are not in the alphabet, in order, without repeats."""
        seen = dict.fromkeys(ch for ch in text if ch not in self.symbols)
        return "".join(seen)

    def encode(self, text: str) -> list[int]:
        unknown = self.unknown_symbols(text)
        if unknown:
            raise LabelError(f"label {text!r} has symbols outside the alphabet: {unknown!r}")
        return [self.symbols.index(ch) for ch in text]

    def decode(self, indices: Sequence[int]) -> str:
        return "".join(self.symbols[int(i)] for i in indices)
