"""The data layer's input errors: files that are missing, unreadable or not what they claim.

``spikejax.main`` prints them as one line (``data error: ...``, exit 2) before anything is
compiled; the message names the file and the fix.
"""


class DataError(ValueError):
  """A data file or directory that cannot be used as given."""


class MissingDataError(DataError, FileNotFoundError):
  """Data files that are not where they are looked for."""
