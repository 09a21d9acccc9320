"""The one exception family of the package.

Every refusal (a misaligned mapping, a malformed scenario, a register value the CPU would
reject) raises a subclass of :class:`KaiserEduError`, which is a ``ValueError``: the message
names what was wrong and what is allowed, and nothing has been changed when it is raised.
"""


class KaiserEduError(ValueError):
    """Bad input to the simulator or the course tools."""


class MappingError(KaiserEduError):
    """A page-table change was refused (conflict, misalignment, bad flags)."""
