"""An exception class of the interop tests' own, as a Celery project defines
them: raised by Python tasks, and named by Rust tasks
(`TaskError::with_module("interop_errors")`), so that a Python caller that
imported this module gets this very class back, with its arguments."""


class ExpectedException(Exception):
    """A failure the tests expect, with two arguments."""
