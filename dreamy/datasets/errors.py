"""The error every data-set reader raises.

Example:
    >>> issubclass(DatasetError, ValueError)
    True
"""


class DatasetError(ValueError):
    """A data set is unknown, not installed, or empty."""
