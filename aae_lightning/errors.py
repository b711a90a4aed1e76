"""Errors caused by what a user asked for; the CLI shows their message as one line and exits with code 2."""


class UserError(ValueError):
    """A bad flag, file or combination of settings. The message is one line and says what to do."""


class HparamError(UserError):
    """A hyperparameter outside what its declaration accepts, or two that do not fit together."""
