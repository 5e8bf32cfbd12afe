"""User-facing errors. The CLI prints `str(err)` on one line and exits 1, with no traceback."""
from __future__ import annotations


class ForgeError(Exception):
    """An error caused by the user's input (a bad file, a bad argument), not a bug."""


class ModelFileError(ForgeError):
    """A model file that cannot be used. The message names the file and the problem."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class RequestError(ForgeError):
    """A request that cannot be served, e.g. a prompt longer than the context."""
