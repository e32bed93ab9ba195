"""Bring a loyalty database in, and take the customer list out, as CSV.

The rules live here, the CLI (`facecrm customers import/export`) and the API
(`POST /customers/import`, `GET /customers/export.csv`) only translate. Every row goes
through `customers.create`/`customers.update`, so it meets exactly the checks the API
and the console meet (sizes, e-mail, tier, loyalty id). No faces: customers enroll later.

* Idempotent on `loyalty_id`: a row whose loyalty id exists updates that customer;
  a row without one always creates.
* An empty cell means "no value": left out on create, left unchanged on update
  (a CRM export with a blank column must not wipe what staff typed in).
* By default a bad row is reported (row, column, message) and nothing of it is
  written; the other rows go in. `atomic=True` writes nothing unless every row is good.
  `dry_run=True` checks everything and writes nothing.
* File-level problems (not UTF-8, unknown or missing columns, too many rows, too
  large) refuse the whole file before any row is looked at.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from facecrm.crm import audit, customers
from facecrm.crm.authz import Permission, Principal
from facecrm.crm.errors import ConflictError, InvalidError
from facecrm.crm.models import Customer

COLUMNS = ("name", "preferred_name", "email", "phone", "loyalty_id", "tier", "notes")
EXPORT_COLUMNS = ("id", *COLUMNS)
IGNORED = frozenset({"id"})  # an export's own id column: matching is by loyalty_id only
MAX_ROWS = 100_000
MAX_BYTES = 32 * 1024 * 1024  # 100k rows of ~300 bytes; a notes-heavy file still fits


@dataclass(frozen=True, slots=True)
class RowError:
    """Why a row was not written: its line in the file (the header is line 1)."""

    row: int
    column: str | None  # None: the row as a whole (a bad cell count, a clash)
    message: str


@dataclass(slots=True)
class ImportReport:
    rows: int = 0
    created: int = 0
    updated: int = 0
    errors: list[RowError] = field(default_factory=list)
    dry_run: bool = False
    atomic: bool = False
    applied: bool = False  # whether anything was committed

    @property
    def failed(self) -> int:
        return len(self.errors)

    def as_dict(self) -> dict[str, object]:
        return {
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "failed": self.failed,
            "dry_run": self.dry_run,
            "atomic": self.atomic,
            "applied": self.applied,
            "errors": [
                {"row": e.row, "column": e.column, "message": e.message} for e in self.errors
            ],
        }


def parse(data: bytes) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the (line number, cells) of every data row, or `InvalidError`."""
    if len(data) > MAX_BYTES:
        raise InvalidError(f"the file exceeds {MAX_BYTES // (1024 * 1024)} MiB", reason="too_large")
    if b"\x00" in data:  # PostgreSQL stores no NUL in text: refused here, not as a 500
        raise InvalidError("the file contains a NUL byte: not a CSV text file", reason="bad_csv")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidError(f"the file is not UTF-8 (byte {exc.start})", reason="not_utf8") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader, [])]
        rows: list[tuple[int, list[str]]] = []
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue  # a blank line
            if len(rows) >= MAX_ROWS:
                raise InvalidError(f"more than {MAX_ROWS} rows", reason="too_many_rows")
            rows.append((reader.line_num, cells))
    except csv.Error as exc:
        raise InvalidError(f"not CSV at line {reader.line_num}: {exc}", reason="bad_csv") from None
    unknown = [h for h in header if h not in COLUMNS and h not in IGNORED]
    if unknown:
        raise InvalidError(
            f"unknown columns: {', '.join(unknown)} (known: {', '.join(COLUMNS)})",
            reason="unknown_columns",
        )
    if "name" not in header:
        raise InvalidError("the file needs a header row with a 'name' column", reason="no_name")
    if len(set(header)) != len(header):
        raise InvalidError("a column appears twice in the header", reason="duplicate_columns")
    return header, rows


def _column_of(session: Session, values: dict[str, object]) -> str | None:
    """The first column that fails the service's rules on its own (for the error report)."""
    for key, value in values.items():
        if key == "name":
            continue
        try:
            customers.check_values(session, {"name": "x", key: value})
        except (InvalidError, ConflictError):
            return key
    return "name" if "name" in values else None


def _import_row(
    session: Session, principal: Principal, values: dict[str, object]
) -> tuple[bool, str]:
    """Create or update one customer; (created?, id). Raises before writing anything."""
    loyalty = values.get("loyalty_id")
    existing = (
        session.scalar(select(Customer.id).where(Customer.loyalty_id == loyalty))
        if loyalty
        else None
    )
    if existing is None:
        return True, customers.create(session, principal, values).id
    return False, customers.update(session, principal, existing, values).id


def _apply(
    session: Session, principal: Principal, header: list[str], rows: list[tuple[int, list[str]]]
) -> ImportReport:
    report = ImportReport(rows=len(rows))
    seen: dict[str, int] = {}
    for line, cells in rows:
        if len(cells) != len(header):
            report.errors.append(
                RowError(line, None, f"{len(cells)} cells for {len(header)} columns")
            )
            continue
        values: dict[str, object] = {
            k: v.strip() for k, v in zip(header, cells, strict=True) if k not in IGNORED
        }
        values = {k: v for k, v in values.items() if v or k == "name"}  # empty: no value
        loyalty = str(values.get("loyalty_id") or "")
        if loyalty and loyalty in seen:
            message = f"loyalty_id repeats row {seen[loyalty]}"
            report.errors.append(RowError(line, "loyalty_id", message))
            continue
        try:
            created, _ = _import_row(session, principal, values)
        except (InvalidError, ConflictError) as exc:
            report.errors.append(RowError(line, _column_of(session, values), str(exc)))
            continue
        if loyalty:
            seen[loyalty] = line
        report.created += created
        report.updated += not created
    return report


def import_csv(
    sessions: sessionmaker[Session],
    principal: Principal,
    data: bytes,
    *,
    dry_run: bool = False,
    atomic: bool = False,
) -> ImportReport:
    """Import a CSV of customers (see the module docstring); audited as `customer_import`."""
    principal.require(Permission.CUSTOMERS_IMPORT)
    header, rows = parse(data)
    with sessions() as session:
        with session.begin() as tx:
            report = _apply(session, principal, header, rows)
            report.dry_run, report.atomic = dry_run, atomic
            report.applied = not dry_run and not (atomic and report.errors)
            if not report.applied:
                tx.rollback()  # drops the rows and their pending audit events
        with session.begin():
            audit.record(
                session,
                principal,
                "customer_import",
                rows=report.rows,
                created=report.created if report.applied else 0,
                updated=report.updated if report.applied else 0,
                failed=len(report.errors),
                dry_run=dry_run,
                atomic=atomic,
                applied=report.applied,
            )
    return report


_FORMULA = re.compile(r"^[=@\t\r]|^[+-](?![\d ()./-]*$)")


def _cell(value: object) -> str:
    """A cell a spreadsheet will not run as a formula (OWASP CSV injection); phone
    numbers such as `+44 20 7946 0000` stay as they are."""
    text = "" if value is None else str(value)
    return f"'{text}" if _FORMULA.match(text) else text


def export_csv(session: Session, principal: Principal) -> str:
    """Every customer's CRM fields as CSV (`EXPORT_COLUMNS`); admins only, audited.

    No faces, consents or activity: those are in the per-customer export.
    """
    principal.require(Permission.CUSTOMERS_EXPORT)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(EXPORT_COLUMNS)
    count = 0
    for customer in session.scalars(select(Customer).order_by(Customer.created_at, Customer.id)):
        writer.writerow([_cell(getattr(customer, c)) for c in EXPORT_COLUMNS])
        count += 1
    audit.record(session, principal, "customer_list_export", customers=count)
    return out.getvalue()
