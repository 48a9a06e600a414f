"""The error types a user can cause. Every message says where (file, layer, field) and what is valid."""

from __future__ import annotations


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
            where.append(f'layer "{self.layer}"' + (f" ({self.path})" if self.path else ""))
        elif self.path:
            where.append(self.path)
        if self.field:
            where.append(f'field "{self.field}"')
        return ": ".join(where + [self.message])

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
