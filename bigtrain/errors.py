"""The one exception type the CLI turns into a one-line message."""


class BigtrainError(Exception):
    """A problem the user can fix (bad config, bad input file, impossible layout).

    The CLI prints ``bigtrain: error: <message>`` on one line and exits with status 2, so the
    message must name the file, key or value at fault and what was expected.
    """
