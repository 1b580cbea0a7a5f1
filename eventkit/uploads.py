"""Reading an uploaded file in a service's router: the multipart field ``file`` or the raw body.

Services that take files (household imports, comparison jobs, the national extract,
death records, subsidy records) accept the file either as ``multipart/form-data`` with
the file in the field ``file`` (a browser form, ``curl -F file=@ids.csv``) or as the
raw request body with the file's content type (a department's system). The body is
read here with its size limit enforced while it streams in (a declared
``Content-Length`` above the limit is refused before reading), and a multipart body is
parsed by Starlette. What the file is (CSV, XLSX) is for ``eventkit.sheets`` to tell
from :attr:`Upload.hint` and the content.

Problems raise :class:`UploadError` (``status``, ``code``): 413 ``file_too_large``,
400 ``invalid_multipart``, 422 ``missing_file``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

__all__ = ["MULTIPART_OVERHEAD", "Upload", "UploadError", "read_body", "read_upload"]

MULTIPART_OVERHEAD = 64 * 1024
"""What a multipart body may add to the file's own size limit (boundaries, part headers, small fields)."""


class UploadError(Exception):
    """An upload that cannot be taken: ``status`` is the HTTP status, ``code`` the problem's code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True, repr=False)
class Upload:
    """An uploaded file's content, with what the request says about it."""

    data: bytes
    filename: str | None = None      # the multipart part's file name
    content_type: str | None = None  # the part's content type, or the raw body's
    multipart: bool = False

    @property
    def hint(self) -> str | None:
        """What the request says the file is: its name, else its content type (None: nothing)."""
        return self.filename or self.content_type or None

    def __repr__(self) -> str:  # the content may be personal data: sizes and names only
        return (f"Upload(bytes={len(self.data)}, filename={self.filename!r}, content_type={self.content_type!r}, "
                f"multipart={self.multipart})")


def _too_large(limit: int, what: str = "upload") -> UploadError:
    return UploadError(413, "file_too_large", f"the {what} is larger than {limit // 2**20} MB")


async def read_body(request: Any, limit: int) -> bytes:
    """The request body (a Starlette ``Request``), refused with 413 ``file_too_large`` as soon as
    it is (or is declared) larger than ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _multipart_field(body: bytes, content_type: str, field: str) -> Upload:
    async def stream():  # MultiPartParser reads an async stream
        yield body

    parser = MultiPartParser(Headers({"content-type": content_type}), stream(), max_files=1, max_fields=10)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise UploadError(400, "invalid_multipart", f"unreadable multipart body: {exc.message}") from None
    try:
        value = form.get(field)
        if isinstance(value, UploadFile):
            return Upload(await value.read(), value.filename or None, value.content_type or None, True)
        if isinstance(value, str):  # a field sent as text (curl -F "file=<ids.csv")
            return Upload(value.encode(), None, None, True)
        raise UploadError(422, "missing_file", f"upload the file in the multipart field {field!r}")
    finally:
        await form.close()


async def read_upload(request: Any, limit: int, *, field: str = "file") -> Upload:
    """The uploaded file of a request (a Starlette ``Request``): the multipart field ``field``
    when the body is ``multipart/form-data``, else the raw body with the request's content type.
    The file may have ``limit`` bytes (a multipart body :data:`MULTIPART_OVERHEAD` more)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        return Upload(await read_body(request, limit), None, content_type or None)
    body = await read_body(request, limit + MULTIPART_OVERHEAD)
    upload = await _multipart_field(body, content_type, field)
    if len(upload.data) > limit:
        raise _too_large(limit, "file")
    return upload
