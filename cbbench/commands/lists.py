"""Strict parsing of the comma-separated lists of the CLI (``--counts``, ``--betas``, ``--methods``,
``--seeds``): every item must be present and well-formed; nothing is guessed (``"100 10 1"`` is not
``100101``, and ``"100,,1"`` is an error, not two classes)."""
from __future__ import annotations

from typing import Callable, Sequence

__all__ = ["parse_list", "parse_seeds", "parse_methods"]


def parse_list(text: str, kind: Callable, option: str) -> list:
    """Items of ``text`` separated by commas (spaces around an item are allowed), each converted by
    ``kind`` (``int`` or ``float``); raises ValueError naming ``option`` and the bad item."""
    if not text.strip():
        raise ValueError(f"{option} is empty")
    items = text.split(",")
    values = []
    for position, item in enumerate(items, 1):
        item = item.strip()
        if not item:
            raise ValueError(f"{option}: item {position} of {text!r} is empty (a doubled or trailing comma?)")
        try:
            values.append(kind(item))
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            hint = "; separate items with commas" if len(item.split()) > 1 else ""
            raise ValueError(f"{option}: {item!r} is not {what}{hint}") from None
    return values


def parse_seeds(text: str) -> object:
    """``K`` (a count: seeds 0..K-1) or a list of two or more seeds like ``0,1,2``."""
    if "," not in text:
        return parse_list(text, int, "--seeds")[0]
    return parse_list(text, int, "--seeds")


def parse_methods(text: str, known: Sequence[str]) -> list:
    """``all`` or a comma-separated list of method names from ``known``."""
    if text.strip() == "all":
        return list(known)
    methods = parse_list(text, str, "--methods")
    for name in methods:
        if name not in known:
            raise ValueError(f"--methods: unknown method {name!r}; choose from {', '.join(known)} (or 'all')")
    return methods
