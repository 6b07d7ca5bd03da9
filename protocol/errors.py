# What can be wrong with a frame. Every error names what was wrong so that a
# technician's log line is enough to act on.


class FrameError(ValueError):
    """Base of every frame problem; the reader reports it and keeps going."""


class BadCRC(FrameError):
    pass


class BadLength(FrameError):
    pass


class UnknownType(FrameError):
    pass


class FieldError(FrameError):
    """A field value cannot be encoded or decoded."""
