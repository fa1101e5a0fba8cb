"""Bad requests answered with a 4xx status and a message that names the file and the problem."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import HTTPException

from common.errors import CheckpointMismatchError, InvalidInputError

__all__ = ["ReadInputsd", "as_http_errors"]


def _cause(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """``error`` or the first exception of type ``kind`` in its chain (MONAI wraps transform errors)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, kind):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


@contextmanager
def as_http_errors() -> Iterator[None]:
    """Turn the project's input errors into HTTP 422 and checkpoint mismatches into 500 with their message."""
    try:
        yield
    except HTTPException:
        raise
    except Exception as error:
        invalid = _cause(error, InvalidInputError)
        if invalid is not None:
            raise HTTPException(status_code=422, detail=str(invalid)) from error
        mismatch = _cause(error, CheckpointMismatchError)
        if mismatch is not None:
            raise HTTPException(status_code=500, detail=str(mismatch)) from error
        raise


class ReadInputsd:
    """Wrap a loading transform so that a file it cannot read is the client's error, named in the message.

    MONAI's readers raise many kinds of errors for a file that is not an image (an unknown format, a truncated
    NIfTI, a text file with an image suffix); all of them become :class:`InvalidInputError`.

    Args:
        load: the bundle's loading transform (MONAI Label's ``LoadImageTensord``).
        keys: the data keys it reads.
    """

    def __init__(self, load, keys) -> None:
        self.load = load
        self.keys = [keys] if isinstance(keys, str) else list(keys)

    def __call__(self, data: dict) -> dict:
        try:
            return self.load(data)
        except InvalidInputError:
            raise
        except Exception as error:
            files = ", ".join(f"{key} {data.get(key)}" for key in self.keys)
            raise InvalidInputError(
                f"cannot read {files} as a medical image (NIfTI, NRRD, DICOM, PNG...): {error}"
            ) from error
