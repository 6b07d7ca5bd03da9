# What can be wrong with a frame. Every error names what was wrong so that a
# technician's log line is enough to act on.


class FrameError(ValueError):
    """Base of every frame problem; the reader reports it and keeps going.
    An error found after the frame's CRC checked out (its length does not
    fit a layout, a field does not decode) has `frame`: a codec.Frame with
    the code, seq and body as received and fields None; other errors have
    no such attribute (getattr(e, "frame", None))."""


class BadCRC(FrameError):
    pass


class BadLength(FrameError):
    pass


class UnknownType(FrameError):
    pass


class FieldError(FrameError):
    """A field value cannot be encoded or decoded."""
