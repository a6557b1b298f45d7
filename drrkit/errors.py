"""The one exception type drrkit raises for bad input, so CLIs can print it as one line."""


class DrrkitError(ValueError):
    """Bad input or an unusable request, with a message meant for a person."""
