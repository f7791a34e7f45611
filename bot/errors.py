"""Domain errors: each carries a message a person can read in Slack or a terminal."""


class DomainError(Exception):
    """A request the domain refuses; nothing was changed."""

    #: A short, stable machine code (``superseded``, ``illegal_transition`` ...).
    code = "refused"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(DomainError):
    """The task or agent named does not exist."""

    code = "not_found"


class InvalidInput(DomainError):
    """An argument is malformed (a bad ref, an empty title ...)."""

    code = "invalid"


class IllegalTransition(DomainError):
    """The status change is not in the transition table."""

    code = "illegal_transition"


class NotClaimHolder(DomainError):
    """An agent acted on a task whose claim it does not hold."""

    code = "not_claim_holder"


class Superseded(DomainError):
    """A late write from a run whose lease epoch has been replaced."""

    code = "superseded"


class Conflict(DomainError):
    """The task changed between read and write; the caller may retry."""

    code = "conflict"


class ConfigurationError(DomainError):
    """A setting the operation needs is missing or wrong."""

    code = "configuration"


class NotAllowed(DomainError):
    """The actor may see the task but not do this to it."""

    code = "not_allowed"


class RateLimited(DomainError):
    """The caller made too many calls lately; the message says when to retry."""

    code = "rate_limited"
