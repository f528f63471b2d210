"""What the EDI API reads and writes: the upload body and the file's JSON.

The upload body is streamed into the spool in chunks, never held in
memory and never read through `request.body` or `request.POST`: an
oversize `Content-Length` is refused before a byte is read, a chunked body
is cut at the limit, and a multipart body hands only its `file` part to
the spool (Django's multipart parser with a handler of this module).
"""

from __future__ import annotations

import io
from typing import Any, Protocol

from django.conf import settings
from django.core.exceptions import (
    RequestDataTooBig,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.core.files.uploadhandler import FileUploadHandler
from django.http import HttpRequest
from django.http.multipartparser import MultiPartParser, MultiPartParserError
from django.urls import reverse
from drf_spectacular.utils import extend_schema_serializer
from rest_framework import serializers

from edi.models import EdiFile
from edi.services.receive import EmptyFile
from edi.services.spool import FileTooLarge, Spooled, SpoolWriter, max_file_bytes
from portal.db import current_schema
from portal.errors import ApplicationError

CHUNK_BYTES = 256 * 1024
# Boundaries and part headers around the file in a multipart body.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
COUNT_KEYS = ("rows", "created", "updated", "deactivated", "unchanged", "row_errors")
RAW_TYPE = "text/csv"
MULTIPART_TYPE = "multipart/form-data"


@extend_schema_serializer(component_name="EdiFile")
class EdiFileSerializer(serializers.Serializer):
    """The file as every EDI endpoint shows it."""

    id = serializers.UUIDField()
    status = serializers.CharField()
    name = serializers.CharField(source="original_name")
    source = serializers.CharField()  # type: ignore[assignment]
    mode = serializers.CharField()
    dry_run = serializers.BooleanField()
    sha256 = serializers.CharField()
    size = serializers.IntegerField()
    counts = serializers.SerializerMethodField()
    errors = serializers.ListField(child=serializers.DictField())  # type: ignore[assignment]
    duplicate_of = serializers.UUIDField(source="duplicate_of_id", allow_null=True)
    received_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    url = serializers.SerializerMethodField()
    results_url = serializers.SerializerMethodField()

    def get_counts(self, edi_file: EdiFile) -> dict[str, int | None]:
        # DESIGN.md's six counts are always present (null until known).
        stored = edi_file.counts or {}
        return {key: stored.get(key) for key in COUNT_KEYS} | stored

    def get_url(self, edi_file: EdiFile) -> str:
        return file_detail_path(edi_file)

    def get_results_url(self, edi_file: EdiFile) -> str | None:
        if not edi_file.results_name:
            return None
        return reverse("edi_api:file-results", kwargs={"file_id": str(edi_file.pk)})


def file_detail_path(edi_file: EdiFile) -> str:
    return reverse("edi_api:file-detail", kwargs={"file_id": str(edi_file.pk)})


# --------------------------------------------------------------------------
# Upload: the body, streamed


class _Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


class _CappedStream:
    """Reads at most `cap` bytes of `stream`; more is `FileTooLarge`."""

    def __init__(self, stream: _Readable, *, cap: int, limit: int) -> None:
        self.stream = stream
        self.cap = cap
        self.limit = limit
        self.read_bytes = 0

    def read(self, size: int = -1, /) -> bytes:
        if size is None or size < 0:
            size = CHUNK_BYTES
        try:
            data = self.stream.read(size)
        except OSError as exc:  # the client went away mid-body
            raise ApplicationError(
                "The upload ended before the whole body arrived.",
                code="incomplete_body",
            ) from exc
        self.read_bytes += len(data)
        if self.read_bytes > self.cap:
            raise FileTooLarge(self.limit)
        return data


class SpoolUploadHandler(FileUploadHandler):
    """Streams the multipart field `file` into the spool; drops the rest."""

    FIELD = "file"

    def __init__(self, spool: SpoolWriter) -> None:
        super().__init__()
        self.spool = spool
        self.found = False
        self.active = False
        self.upload_name = ""

    def new_file(self, field_name: str, file_name: str, *args: Any, **kw: Any) -> None:
        self.active = field_name == self.FIELD
        if self.active:
            if self.found:
                raise ApplicationError(
                    "Send one file per request.",
                    details={self.FIELD: ["Only one file is accepted."]},
                )
            self.found = True
            self.upload_name = file_name or ""

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        if self.active:
            self.spool.write(raw_data)

    def file_complete(self, file_size: int) -> None:
        self.active = False


def _declared_length(request: HttpRequest) -> int | None:
    raw = str(request.META.get("CONTENT_LENGTH") or "").strip()
    if not raw:
        return None
    if not raw.isdigit():
        raise ApplicationError(
            "Content-Length must be a number of bytes.", code="invalid_content_length"
        )
    return int(raw)


def _body_stream(request: HttpRequest, length: int | None) -> _Readable:
    """The request body as a stream, without reading any of it yet."""
    if length is not None:
        return request  # Django's stream, limited to Content-Length
    if "chunked" not in request.META.get("HTTP_TRANSFER_ENCODING", "").lower():
        return io.BytesIO(b"")  # no body at all
    # Only a server that decodes chunked bodies may be read to the end
    # (gunicorn does); runserver's wsgiref does not.
    if not request.META.get("wsgi.input_terminated"):
        raise ApplicationError(
            "Send a Content-Length: this server does not accept chunked bodies.",
            code="length_required",
            status=411,
        )
    stream: _Readable = request.META["wsgi.input"]
    return stream


def _spool_raw(stream: _CappedStream, spool: SpoolWriter) -> str:
    while chunk := stream.read(CHUNK_BYTES):
        spool.write(chunk)
    return ""


def _spool_multipart(
    request: HttpRequest,
    stream: _CappedStream,
    spool: SpoolWriter,
    length: int | None,
) -> str:
    meta = dict(request.META)
    if length is None:
        # A chunked body: the parser needs a length, the cap enforces it.
        meta["CONTENT_LENGTH"] = str(stream.cap)
    handler = SpoolUploadHandler(spool)
    encoding = request.encoding or settings.DEFAULT_CHARSET
    try:
        # The parser only calls read(); the stub asks for a whole file API.
        parser = MultiPartParser(meta, stream, [handler], encoding)  # type: ignore[arg-type]
        fields, _ = parser.parse()
    except MultiPartParserError as exc:
        raise ApplicationError(
            f"The multipart body is malformed: {exc}", code="invalid_multipart"
        ) from None
    except (RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent) as exc:
        raise ApplicationError(
            f"The multipart body has too much besides the file: {exc}",
            code="invalid_multipart",
        ) from None
    if not handler.found:
        message = (
            "Send the CSV as a file part (curl -F file=@directory.csv)."
            if handler.FIELD in fields
            else "This field is required."
        )
        raise ApplicationError(
            "The multipart body has no file field.",
            details={handler.FIELD: [message]},
        )
    return handler.upload_name


def upload_receive_body(
    request: HttpRequest, *, multipart: bool
) -> tuple[Spooled, str]:
    """Stream the body into the spool; return it and the file's name.

    Raises `FileTooLarge` (413) on the declared length before reading, or
    once the body passes the limit; the spool part is removed then.
    """
    limit = max_file_bytes()
    cap = limit + (MULTIPART_OVERHEAD_BYTES if multipart else 0)
    length = _declared_length(request)
    if length is not None and length > cap:
        raise FileTooLarge(limit)
    stream = _CappedStream(_body_stream(request, length), cap=cap, limit=limit)
    with SpoolWriter(current_schema(), limit=limit) as spool:
        if multipart:
            name = _spool_multipart(request, stream, spool, length)
        else:
            name = _spool_raw(stream, spool)
        if length is not None and stream.read_bytes < length:
            raise ApplicationError(
                "The upload ended before the whole body arrived.",
                code="incomplete_body",
            )
        return spool.finish(), name


def upload_media_type(request: HttpRequest) -> str:
    """`text/csv` (any charset) or `multipart/form-data`, else 415.

    A body that is plainly empty gets `empty_file` (400) whatever its type:
    that is the mistake to report.
    """
    media_type = request.META.get("CONTENT_TYPE", "").split(";", 1)[0]
    media_type = media_type.strip().lower()
    if media_type in (RAW_TYPE, MULTIPART_TYPE):
        return media_type
    length = _declared_length(request)
    chunked = "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower()
    if length == 0 or (length is None and not chunked):
        raise EmptyFile()
    raise ApplicationError(
        "Send the CSV as text/csv or as the multipart field file.",
        code="unsupported_media_type",
        status=415,
        details={"accepted": [RAW_TYPE, MULTIPART_TYPE]},
    )
