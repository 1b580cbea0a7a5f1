"""HTTP API of bulk household imports: template download, upload, import reports.

The upload is ``multipart/form-data`` with the file in the field ``file`` (a raw
body with an XLSX or CSV content type is accepted too), read by
``eventkit.uploads``: the size limit is enforced while the body streams in.
"""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from eventkit.runtime import current_principal, principal_of, problem, runtime_of
from eventkit.telemetry import correlation_id
from eventkit.uploads import UploadError, read_upload

from . import importer
from .commands import Registry

router = APIRouter(tags=["imports"])

MAX_UPLOAD_BYTES = importer.MAX_FILE_BYTES


@router.get("/imports/template", summary="Download the household import template (XLSX or CSV)",
            response_class=Response,
            responses={200: {"content": {importer.CONTENT_TYPES["xlsx"]: {}, "text/csv": {}},
                             "description": "The template file"}})
async def template(format: str = Query("xlsx", pattern="^(xlsx|csv)$",
                                       description="xlsx (two sheets) or csv (one file, `record` column)")):
    data = importer.build_template(format)
    name = f"households-import-template.{format}"
    zh = f"建档立卡户导入模板.{format}"
    return Response(data, media_type=importer.CONTENT_TYPES[format], headers={
        "Content-Disposition": f"attachment; filename=\"{name}\"; filename*=UTF-8''{quote(zh)}",
        "Cache-Control": "no-cache"})


async def upload(request: Request, limit: int = MAX_UPLOAD_BYTES) -> tuple[str | None, bytes]:
    """An uploaded file: multipart field ``file``, or the raw body (XLSX or CSV by content type);
    (file name or None, content)."""
    found = await read_upload(request, limit)
    if found.multipart:
        return found.filename, found.data
    content_type = found.content_type or ""
    name = None
    if "spreadsheetml" in content_type:
        name = "upload.xlsx"
    elif "csv" in content_type:
        name = "upload.csv"
    return name, found.data


def _actor(request: Request) -> str | None:
    principal = principal_of(request)
    return principal.id if principal is not None else None


@router.post("/imports/households", summary="Import households from a filled template (XLSX or CSV)",
             responses={200: {"description": "Imported (the report; with skip_invalid, errors list the "
                                             "skipped rows)"},
                        413: {"description": "The file is larger than 20 MB"},
                        422: {"description": "The file has errors: nothing was imported (problem+json with "
                                             "`errors` [{sheet,row,column,reason,code}] and the report)"}})
async def import_households(request: Request, skip_invalid: bool = Query(
        False, description="Import the valid households and report the others (default: all or nothing)")):
    runtime = runtime_of(request)
    registry: Registry = runtime.state["registry"]
    try:
        file_name, data = await upload(request)
    except UploadError as exc:
        return problem(exc.status, exc.code, str(exc))
    if not data:
        return problem(422, "empty_file", "the uploaded file is empty")
    try:
        report = await importer.import_file(
            registry, runtime.pool, data, file_name=file_name, skip_invalid=skip_invalid,
            actor=_actor(request), correlation_id=correlation_id.get(),
            covers=current_principal(request, "an import").covers)
    except importer.ImportFileError as exc:
        status = 413 if exc.code == "file_too_large" else 415 if exc.code == "unsupported_format" else 422
        return problem(status, exc.code, str(exc))
    body = report.to_json()
    headers = {"Location": f"/imports/{report.import_id}"}
    if report.rejected:
        counts = body["counts"]
        detail = (f"{counts['errors']} error(s) in {counts['households_in_file']} household(s); nothing was "
                  "imported. Correct the rows listed (or import with skip_invalid=true).")
        response = problem(422, "import_rejected", "The file has errors: nothing was imported", detail,
                           errors=body["errors"], import_id=report.import_id, counts=counts,
                           already_imported=body["already_imported"])
        response.headers.update(headers)
        return response
    return JSONResponse(body, status_code=200, headers=headers)


async def _own_import(request: Request, import_id: uuid.UUID) -> dict[str, Any] | None:
    """An import's report for the user who ran it (or a province-level caller); None otherwise, as
    for an unknown import: a report names households and rows of the importer's jurisdiction."""
    principal = current_principal(request, "an import report")
    found = await importer.get_import(runtime_of(request).pool, str(import_id))
    if found is None or (found.get("actor") != principal.id and principal.level != "province"):
        return None
    return found


@router.get("/imports/{import_id}", summary="An import's report")
async def get_import(import_id: uuid.UUID, request: Request) -> Any:
    found = await _own_import(request, import_id)
    if found is None:
        return problem(404, "import_not_found", f"import {import_id} is not known")
    return found


@router.get("/imports/{import_id}/errors.csv", summary="An import's errors as CSV",
            response_class=Response, responses={200: {"content": {"text/csv": {}}}})
async def get_import_errors(import_id: uuid.UUID, request: Request):
    found = await _own_import(request, import_id)
    if found is None:
        return problem(404, "import_not_found", f"import {import_id} is not known")
    report = importer.ImportReport(str(import_id), found.get("file_name"), found.get("format"),
                                   found.get("sha256"), bool(found.get("skip_invalid")))
    report.errors = [importer.RowError(**e) for e in found.get("errors") or []]
    report.already_imported = list(found.get("already_imported") or [])
    return Response(report.errors_csv().encode("utf-8-sig"), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="import-{import_id}-errors.csv"'})
