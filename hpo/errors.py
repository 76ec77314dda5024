"""The user-facing error family: each is printed as one line, and the CLI exits with code 2."""


class HPOError(Exception):
    """Bad input to hpo (unknown study, malformed YAML, impossible bounds, bad storage URL).

    The message says what is wrong and how to fix it.
    """
