"""The one exception type for a user's mistake.

Bad data, an option that cannot work, a mesh that does not fit, a missing or damaged checkpoint, an
unwritable workdir: each raises `UserError` with a one-line message saying what is wrong and how to
fix it. `cli.run` prints that line as `error: ...` and exits with status 2; anything else is a bug
and keeps its traceback.
"""


class UserError(ValueError):
  """A mistake in the user's input; the message is one line: what is wrong; how to fix it."""
