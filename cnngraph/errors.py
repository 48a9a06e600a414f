"""The error types a user can cause. Every message says where (file, layer, field) and what is valid."""

from __future__ import annotations

import unicodedata

NAME_LIMIT = 80  # characters of a user-given name shown in a message; the rest is elided

# Unicode categories of the characters that would break the one line (newlines, U+2028), drive
# the terminal (escapes) or fail to print (lone surrogates)
UNPRINTABLE = ("Cc", "Cs", "Zl", "Zp")
# bidirectional embeddings, overrides and isolates: they reorder what a terminal or an editor shows
# (a name could display as another name), so they are escaped and refused like control characters
BIDI_CONTROLS = frozenset(map(chr, [*range(0x202A, 0x202F), *range(0x2066, 0x206A)]))


def unprintable(c: str) -> bool:
    """A character that must not reach a message or a name as it is."""
    return unicodedata.category(c) in UNPRINTABLE or c in BIDI_CONTROLS


def one_line(text: str) -> str:
    """`text` with control, surrogate and line-breaking characters escaped (\\n, \\x1b, \\u2028)."""
    if text.isprintable():
        return text
    return "".join((repr(c)[1:-1] if c not in BIDI_CONTROLS else f"\\u{ord(c):04x}") if unprintable(c) else c
                   for c in text)


def shorten(name: object, limit: int = NAME_LIMIT) -> str:
    """A user-given name on one line and clipped, so a 100000-character name cannot make a message that long."""
    text = one_line(str(name))
    return text if len(text) <= limit else f"{text[:limit - 3]}... ({len(text):,} characters)"


def quote(name: object, limit: int = NAME_LIMIT) -> str:
    """A user-given name (layer, field, reference) as a message shows it: shortened, in double quotes."""
    return f'"{shorten(name, limit)}"'


class CnnGraphError(Exception):
    """Base of every error cnngraph raises on bad input; `str(err)` is one line a user can act on."""

    def __init__(self, message: str, *, file: str | None = None, layer: str | None = None,
                 path: str | None = None, field: str | None = None):
        self.message, self.file, self.layer, self.path, self.field = message, file, layer, path, field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.layer is not None:
            where.append(f"layer {quote(self.layer)}" + (f" ({self.path})" if self.path else ""))
        elif self.path:
            where.append(self.path)
        if self.field is not None:  # "" too: a JSON key may be empty
            where.append(f"field {quote(self.field)}")
        return one_line(": ".join(where + [self.message]))  # whatever a message quotes, it stays one line

    def located(self, file: str | None) -> "CnnGraphError":
        """The same error, naming the file it came from (set once, by whoever knows the file)."""
        if file and not self.file:
            self.file = file
            self.args = (str(self),)
        return self


class SpecError(CnnGraphError):
    """The spec is malformed: bad JSON, unknown op or field, bad value, bad reference."""


class ShapeError(CnnGraphError):
    """The spec is well formed but its tensor shapes do not fit together."""


class WeightsError(CnnGraphError):
    """A weights file or dict does not match the network (missing, extra, mis-shaped or non-float keys)."""


class InputError(CnnGraphError):
    """An input given to a compiled model (or an input file) has the wrong shape, dtype or format."""


class DeviceError(CnnGraphError):
    """The requested device or backend is not available."""


class InternalError(RuntimeError):
    """A bug in cnngraph itself (a pass broke an invariant), not a user's mistake: deliberately not
    a CnnGraphError, so it is never reported as bad input."""


class ResourceError(CnnGraphError):
    """The network is valid but needs more memory than the limit allows (`max_memory`)."""


class CnnGraphWarning(UserWarning):
    """Something a user should know that is not an error, e.g. weights converted to float32.
    The CLI prints these as "note: ..." lines on stderr."""
