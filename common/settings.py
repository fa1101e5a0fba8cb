"""Reading config values that users type on the command line."""

from __future__ import annotations

__all__ = ["as_flag", "if_flag"]

_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")


def as_flag(value: object, name: str) -> bool:
    """A yes/no setting as a bool.

    ``python -m monai.bundle run ... --resume false`` passes the string ``"false"``, which Python would read as
    true; this reads it as False.

    Args:
        value: a bool, or one of the strings true/yes/1 and false/no/0 (any case).
        name: the setting's name, for the error message.

    Raises:
        ValueError: for any other value.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def if_flag(value: object, name: str, items: list) -> list:
    """``items`` when the yes/no setting ``value`` is true (see :func:`as_flag`), else an empty list.

    For optional steps in a config's list of transforms or handlers:
    ``"$@steps + common.settings.if_flag(@save_probabilities, 'save_probabilities', @saving_steps)"``.
    """
    return list(items) if as_flag(value, name) else []
