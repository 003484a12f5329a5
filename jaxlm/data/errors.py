"""The one exception type for bad user input in the data package."""


class DataError(ValueError):
  """Bad data configuration or input; the message is one line saying what is
  wrong and how to fix it (the CLI prints it and exits with status 2)."""
