"""The `facecrm` command line.

Exit codes: 0 done, 1 refused or failed (one `error: ...` line on stderr, never a
traceback for a `FacecrmError`, bad settings or an unreachable database), 2 a usage
error (Click's own: an unknown option, a missing argument).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text
from typer.core import TyperGroup

from facecrm.config import API_PREFIX, Settings, configure, get_settings
from facecrm.errors import FacecrmError
from facecrm.extras import missing_extra
from facecrm.logs import configure_logging, mask_secrets

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    import uvicorn
    from sqlalchemy.orm import Session

    from facecrm.crm.runtime import Runtime
    from facecrm.crm.service import FaceCRM

console = Console()
err = Console(stderr=True)


def _error_line(message: str) -> None:
    """One `error: ...` line on stderr (not wrapped, no markup read from the message; a
    URL's password masked: a camera's or a database's URL may be quoted)."""
    err.print(Text.assemble(("error: ", "bold red"), mask_secrets(message)), soft_wrap=True)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class _Commands(TyperGroup):
    """The root command: ONE place that turns refused operations into exit codes.

    It wraps the global callback (settings load there) and every subcommand, so the
    same translation holds for `facecrm ...`, `python -m facecrm` and Typer's CliRunner.
    """

    def invoke(self, ctx: Any) -> Any:  # typer's own (vendored) click Context
        try:
            return super().invoke(ctx)
        except FacecrmError as exc:
            _error_line(f"{_first_line(exc)} ({exc.reason})")
            raise typer.Exit(exc.exit_code) from exc
        except ModuleNotFoundError as exc:  # an agent-only install asked for a server command
            missing = missing_extra(exc)
            if missing is None:
                raise
            _error_line(f"{missing} ({missing.reason})")
            raise typer.Exit(missing.exit_code) from exc
        except Exception as exc:
            message = _database_error(exc)
            if message is None:
                raise
            _error_line(message)
            raise typer.Exit(1) from exc


def _database_error(exc: Exception) -> str | None:
    """One line for a database that cannot be used (None: `exc` is something else).

    SQLAlchemy is imported only if a command already loaded it: an agent-only install
    has none, and then no database error can have happened.
    """
    if "sqlalchemy" not in sys.modules:
        return None
    from sqlalchemy.exc import ArgumentError, OperationalError

    if isinstance(exc, OperationalError):  # the server is down, refuses us, a locked file...
        return f"cannot use the database: {_first_line(exc.orig or exc)}"
    if isinstance(exc, ArgumentError):  # create_engine: not a URL, or an unknown dialect
        return f"FACECRM_DATABASE_URL is not a usable database URL: {_first_line(exc)}"
    return None


app = typer.Typer(
    cls=_Commands,
    help="facecrm: opt-in face recognition for retail customer service.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
customers_app = typer.Typer(help="List, show and erase customers.", no_args_is_help=True)
app.add_typer(customers_app, name="customers")
admin_app = typer.Typer(help="Staff accounts.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
stores_app = typer.Typer(help="Stores of the chain.", no_args_is_help=True)
app.add_typer(stores_app, name="stores")
devices_app = typer.Typer(help="Store agents and POS terminals.", no_args_is_help=True)
app.add_typer(devices_app, name="devices")
audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")
keys_app = typer.Typer(help="Master keys for encryption at rest.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
templates_app = typer.Typer(help="Customers' face templates.", no_args_is_help=True)
app.add_typer(templates_app, name="templates")
erasures_app = typer.Typer(
    help="The erasure log, re-applied after a restore.", no_args_is_help=True
)
app.add_typer(erasures_app, name="erasures")
disputes_app = typer.Typer(
    help='Matches staff said were wrong ("not this person").', no_args_is_help=True
)
app.add_typer(disputes_app, name="disputes")
otp_app = typer.Typer(help="One-time codes of self-enrollment.", no_args_is_help=True)
app.add_typer(otp_app, name="otp")


@app.callback()
def main(
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", envvar="FACECRM_DATA_DIR", help="Where facecrm keeps its data."),
    ] = None,
) -> None:
    """Apply global options."""
    configure(**({"data_dir": data_dir} if data_dir else {}))


def _fail(message: str) -> typer.Exit:
    """Report a refused operation in a command's own words (exit 1)."""
    _error_line(message)
    return typer.Exit(1)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    )


def _runtime() -> Runtime:
    """The database, keys and audit chain (no models, no face service: a quick start).

    Every command acts as `SYSTEM`, the local operator, and each crm operation it calls
    runs in its own transaction (`Runtime.run`) and records its own audit event.
    """
    from facecrm.crm.runtime import Runtime  # server-only, like FaceCRM

    return Runtime(get_settings())


def _crm() -> FaceCRM:
    """The face service, for the commands that handle faces and templates."""
    from facecrm.crm.service import FaceCRM  # server-only: not imported by `facecrm agent`

    return FaceCRM(runtime=_runtime())


@app.command()
def migrate() -> None:
    """Bring the database to this facecrm's schema (after an upgrade; `facecrm serve` does
    it at start), and encrypt any template stored before encryption at rest."""
    from facecrm.crm import db
    from facecrm.crm.service import FaceCRM

    crm = FaceCRM(get_settings(), migrate=True)
    before, head = crm.runtime.migrated_from, db.head_revision()
    crm.close()
    if before == head:
        console.print(f"Schema {head}: up to date.")
    else:
        console.print(f"Schema {before or 'none'} → {head}.")
    if crm.legacy_sealed:
        console.print(f"Encrypted {crm.legacy_sealed} template(s) stored before encryption.")
    if crm.search_rows_restored:  # a restored dump without gallery_vectors (docs/deploy.md)
        console.print(f"Rebuilt {crm.search_rows_restored} search row(s) from the templates.")


@templates_app.command("backfill")
def templates_backfill() -> None:
    """Give customers enrolled before the two-model cascade a second-model (SFace) template
    from their kept photo (audited). Customers without a kept photo are recognised by the
    first model alone, at its own higher threshold, until a photo is added."""
    from facecrm.crm.authz import SYSTEM

    crm = _crm()
    if crm.cascade is None:
        raise _fail("the cascade is off (single-model embedder or calibration): nothing to do")
    result = crm.backfill_templates(SYSTEM)
    crm.close()
    console.print(
        f"Backfilled {result.backfilled} customer(s) from their kept photo; "
        f"{result.first_model_only} left to the first model alone (no usable kept photo)."
    )


@app.command()
def enroll(
    name: Annotated[str, typer.Argument(help="The customer's name.")],
    photos: Annotated[list[Path], typer.Argument(help="One or more photos of the customer.")],
    consent: Annotated[
        bool | None,
        typer.Option(
            "--consent/--no-consent",
            help="Confirm the customer gave in-store recognition consent (asked when omitted).",
        ),
    ] = None,
    channel: Annotated[str, typer.Option(help="Where consent was given.")] = "associate",
) -> None:
    """Enroll an opted-in customer from one or more photos (all must pass the quality gate)."""
    from facecrm.crm.authz import SYSTEM
    from facecrm.crm.cards import enrolled_photos
    from facecrm.crm.consent_text import CURRENT as CONSENT_TEXT_VERSION

    if consent is None:
        consent = typer.confirm(
            f"Has {name} given consent to in-store face recognition "
            f"(consent text {CONSENT_TEXT_VERSION})?",
            default=False,
        )
    if not consent:
        raise _fail("no consent: nothing was stored (facecrm never stores a face without consent)")
    from facecrm.crm.service import Photo
    from facecrm.vision.image import read_image

    try:
        crm = _crm()
        images = [Photo(str(p), read_image(p, crm.settings)) for p in photos]
        customer = crm.enroll(name, images, CONSENT_TEXT_VERSION, channel, SYSTEM)
    except FacecrmError as exc:  # an unusable photo, the quality gate, a duplicate face...
        message = str(exc).removesuffix("; nothing was stored")
        raise _fail(f"{message} ({exc.reason}); nothing was stored") from exc
    console.print(
        f"Enrolled [bold]{customer.name}[/] as [cyan]{customer.id}[/] "
        f"with {enrolled_photos(customer.templates)} template(s)."
    )


@app.command()
def identify(
    photo: Annotated[Path, typer.Argument(help="A photo with one or more faces.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Say which opted-in customers are in a photo; everyone else is "unknown"."""
    from facecrm.crm.authz import SYSTEM
    from facecrm.vision.image import read_image

    crm = _crm()
    image = read_image(photo, crm.settings)
    results = crm.identify(image, SYSTEM)
    rows: list[dict[str, Any]] = [
        {
            "box": r.face.box.as_dict(),
            "customer": (
                {
                    "id": r.match.customer_id,
                    "name": r.customer_name,
                    "similarity": round(r.match.similarity, 4),
                }
                if r.match
                else "unknown"
            ),
            **({} if r.match else {"reason": r.reason or "no_match"}),
        }
        for r in results
    ]
    if as_json:
        threshold = round(crm.first_threshold, 4)
        console.print_json(json.dumps({"faces": rows, "threshold": threshold}))
        return
    if not rows:
        console.print("No face found.")
        return
    table = Table("face", "box (x, y, w, h)", "customer", "similarity")
    for n, r in enumerate(results, 1):
        box = ", ".join(str(v) for v in r.face.box.as_dict().values())  # x, y, width, height
        if r.match:
            table.add_row(
                str(n),
                box,
                f"{r.customer_name} ({r.match.customer_id})",
                f"{r.match.similarity:.3f}",
            )
        else:
            table.add_row(str(n), box, "[dim]unknown[/]", "")
    console.print(table)


AsJson = Annotated[
    bool, typer.Option("--json", help="Print one JSON document (a list) instead of a table.")
]
AsJsonObject = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]


def _id_column() -> Column:
    """Ids are copied into other commands: never truncated nor folded, whatever the width
    (the other columns give way). Full ids rather than short prefixes: the API, the audit
    trail and the exports name customers by their full id, so there is one form to paste."""
    return Column("id", no_wrap=True, min_width=32, overflow="ignore")


def _listing(rows: list[dict[str, Any]], columns: tuple[str, ...], as_json: bool) -> None:
    """Print `rows` as JSON (one list on stdout) or as a table of `columns` (id first)."""
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table(_id_column(), *columns[1:])
    for row in rows:
        table.add_row(*("" if row[c] is None else str(row[c]) for c in columns))
    console.print(table)


@customers_app.command("list")
def customers_list(as_json: AsJson = False) -> None:
    """All customers with their number of templates."""
    from facecrm.crm.authz import SYSTEM

    rows = [
        {
            "id": customer.id,
            "name": customer.name,
            "templates": templates,
            "enrolled": customer.created_at.strftime("%Y-%m-%d %H:%M"),
        }
        for customer, templates in _crm().customers(SYSTEM)
    ]
    _listing(rows, ("id", "name", "templates", "enrolled"), as_json)


@customers_app.command("import")
def customers_import(
    file: Annotated[Path, typer.Argument(help="A CSV file with a header row.", dir_okay=False)],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check every row; write nothing.")
    ] = False,
    atomic: Annotated[
        bool, typer.Option("--atomic", help="Write nothing unless every row is good.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Import customers from a CRM's CSV (name, preferred_name, email, phone, loyalty_id,
    tier, notes): a known loyalty_id updates that customer. Bad rows are reported and
    skipped (exit 1); the others go in unless --atomic."""
    from facecrm.crm import imports
    from facecrm.crm.authz import SYSTEM

    try:
        if file.stat().st_size > imports.MAX_BYTES:  # refused before it is read into memory
            raise _fail(f"{file} exceeds {imports.MAX_BYTES // (1024 * 1024)} MiB")
        data = file.read_bytes()
    except OSError as exc:
        raise _fail(f"cannot read {file}: {exc.strerror}") from exc
    report = imports.import_csv(_runtime().sessions, SYSTEM, data, dry_run=dry_run, atomic=atomic)
    if as_json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        for e in report.errors:
            err.print(
                Text(f"row {e.row}" + (f", {e.column}" if e.column else "") + f": {e.message}")
            )
        if report.applied:
            outcome = "the good rows were written"
        elif dry_run:
            outcome = "nothing written (dry run)"
        else:
            outcome = "nothing written (--atomic and some rows failed)"
        console.print(
            f"{report.rows} row(s): {report.created} new, {report.updated} updated, "
            f"{len(report.errors)} failed; {outcome}."
        )
    if report.errors:
        raise typer.Exit(1)


@customers_app.command("export")
def customers_export(
    file: Annotated[Path, typer.Argument(help="Where to write the CSV (created 0600).")],
) -> None:
    """Write every customer's CRM fields (not faces, consents or activity) as CSV."""
    from facecrm.crm import imports
    from facecrm.crm.authz import SYSTEM
    from facecrm.private import write_file

    text = _runtime().run(imports.export_csv, SYSTEM)
    write_file(file, text.encode())
    console.print(f"Wrote {text.count(chr(10)) - 1} customer(s) to {file}.")


@customers_app.command("show")
def customers_show(customer_id: str) -> None:
    """One customer: consents and templates (the lookup is audited)."""
    from facecrm.crm.authz import SYSTEM

    customer = _crm().customer(customer_id, SYSTEM)
    console.print(
        f"[bold]{customer.name}[/] ({customer.id}), enrolled {customer.created_at:%Y-%m-%d}"
    )
    for c in customer.consents:
        state = f"withdrawn {c.withdrawn_at:%Y-%m-%d}" if c.withdrawn_at else "active"
        console.print(f"  consent {c.purpose} ({c.text_version}, {c.channel}): {state}")
    for t in customer.templates:
        console.print(f"  template {t.id}: {t.model_id}, from {t.source}, {t.created_at:%Y-%m-%d}")


@customers_app.command("delete")
def customers_delete(
    customer_id: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Erase a customer: profile, consents and templates; out of search at once."""
    from facecrm.crm.authz import SYSTEM

    crm = _crm()
    customer = crm.customer(customer_id, SYSTEM)
    if not yes and not typer.confirm(f"Erase {customer.name} ({customer.id})?", default=False):
        raise typer.Exit(1)
    crm.delete_customer(customer_id, SYSTEM)
    console.print(f"Erased {customer.name} ({customer_id}).")


@app.command("eval")
def eval_(
    directory: Annotated[Path, typer.Argument(help="One folder per identity (LFW layout).")],
    fmt: Annotated[str, typer.Option("--format", help="text or json.")] = "text",
    attributes: Annotated[
        bool,
        typer.Option(
            "--attributes",
            help="Score the face-attribute models instead: DIR/expression/<label>/*, "
            "DIR/gender/<label>/*, DIR/age.csv (path,age); --plot draws the confusion matrices.",
        ),
    ] = False,
    plot: Annotated[
        Path | None,
        typer.Option(
            help="Draw the ROC (log FAR, operating point, impostor pairs per decade) and the "
            "score histograms into this PNG; no ROC with fewer than 1/FACECRM_TARGET_FMR "
            "impostor pairs."
        ),
    ] = None,
    pairs: Annotated[
        Path | None, typer.Option(help="Score only these pairs (file_x,file_y).")
    ] = None,
    scores: Annotated[Path | None, typer.Option(help="Write pair scores to this CSV.")] = None,
    workers: Annotated[int, typer.Option(help="Processes (default: up to 2).")] = 0,
    calibrate: Annotated[
        bool,
        typer.Option(
            help="Save this set's calibration (both cascade stages); FACECRM_CALIBRATION=path "
            "points a server at it."
        ),
    ] = False,
    cascade: Annotated[
        bool, typer.Option(help="Also run the dlib → SFace cascade (default embedder only).")
    ] = True,
    top: Annotated[int, typer.Option(min=0, help="Hardest impostor/genuine pairs listed.")] = 5,
    disputes: Annotated[
        Path | None,
        typer.Option(
            help="A `facecrm disputes export` file: its scores are impostors seen in the "
            "stores; with --calibrate the threshold floor is raised above them."
        ),
    ] = None,
) -> None:
    """Measure verification and open-set identification on a labelled photo set."""
    from facecrm.eval import cascade_eval, runner
    from facecrm.eval import disputes as eval_disputes
    from facecrm.eval import report as report_mod
    from facecrm.gallery.threshold import load_calibration, load_cascade
    from facecrm.vision.pipeline import build_embedder

    if fmt not in {"text", "json"}:
        raise typer.BadParameter("must be text or json", param_hint="--format")
    if attributes:
        _eval_attributes(directory, fmt, plot)
        return
    if scores is not None and pairs is None:
        raise typer.BadParameter("needs --pairs", param_hint="--scores")
    settings: Settings = get_settings()
    model_id = build_embedder(settings).model_id
    workers = workers or runner.default_workers()
    disputed = None
    if disputes is not None:
        try:
            disputed = eval_disputes.read(disputes)
        except (OSError, ValueError) as exc:
            raise _fail(str(exc)) from exc
    try:
        samples = runner.scan(directory)
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from exc
    second_settings = settings.model_copy(update={"embedder": "sface"})
    two = cascade and settings.embedder == "dlib"
    with _progress() as progress:
        task = progress.add_task("embedding", total=len(samples) * (2 if two else 1))
        embedded, seconds = runner.embed_set(
            directory, settings, workers, lambda: progress.advance(task)
        )
        second = (
            runner.embed_set(directory, second_settings, workers, lambda: progress.advance(task))[0]
            if two
            else None
        )
    calibration_path = settings.calibration
    if calibrate:
        calibration_path = cascade_eval.save_calibration(
            embedded,
            second,
            (model_id, build_embedder(second_settings).model_id if two else None),
            settings.data_dir / "calibration" / f"{model_id}.json",
            str(directory),
        )
        if disputed is not None:
            floor = eval_disputes.raise_floor(calibration_path, model_id, disputed)
            if floor is not None:
                err.print(f"threshold floor raised above the highest disputed score ({floor:.4f})")
        err.print(
            f"calibration saved to {calibration_path} "
            f"(a server uses it with FACECRM_CALIBRATION={calibration_path})"
        )
    try:
        calibration = load_calibration(model_id, settings.data_dir, calibration_path)
        cascade_cal = load_cascade(model_id, settings.data_dir, calibration_path) if two else None
    except (LookupError, ValueError, OSError) as exc:
        raise _fail(str(exc)) from exc
    threshold = calibration.threshold(settings.target_fmr)
    report = {
        "dataset": str(directory),
        **runner.evaluate(embedded, model_id, threshold),
        "seconds_per_image": seconds,
        "workers": workers,
    }
    if second is not None and cascade_cal is not None:
        report["cascade"] = cascade_eval.evaluate_cascade(
            embedded, second, cascade_cal, settings.target_fmr
        )
    report["hardest_pairs"] = cascade_eval.hardest_pairs(embedded, second, top, cascade_cal)
    if disputed is not None:
        genuine = [
            s
            for x, y in runner.all_pairs(embedded)
            if x.sample.identity == y.sample.identity
            and (s := runner.score(x.template, y.template)) is not None
        ]
        try:
            report["disputes"] = eval_disputes.summary(disputed, model_id, threshold, genuine)
        except ValueError as exc:
            raise _fail(str(exc)) from exc
    if pairs is not None:
        by_path = {e.sample.path: e for e in embedded}
        try:
            listed = runner.read_pairs(pairs, by_path)
        except (OSError, ValueError) as exc:
            raise _fail(str(exc)) from exc
        report["verification"] = report_mod.verification_of(listed, threshold)
        if scores is not None:
            runner.write_scores(scores, listed, threshold)
    if plot is not None:
        too_few = report_mod.plot_roc(
            embedded,
            plot,
            report,
            cascade_eval.plot_values(embedded, second, cascade_cal, settings.target_fmr),
            target_far=settings.target_fmr,
        )
        if too_few is not None:  # on stderr: stdout may be the JSON report
            err.print(too_few, markup=False, soft_wrap=True)
    if fmt == "json":
        print(json.dumps(report, indent=2))
    else:
        report_mod.print_text(report, console)
        if isinstance(report.get("disputes"), dict):
            eval_disputes.print_text(report["disputes"], console)  # type: ignore[arg-type]


def _eval_attributes(directory: Path, fmt: str, plot: Path | None) -> None:
    """`facecrm eval --attributes`: see `facecrm.eval.attributes`."""
    from facecrm.eval import attributes as attribute_eval
    from facecrm.vision.attributes import default_attribute_stage
    from facecrm.vision.pipeline import default_pipeline

    settings: Settings = get_settings()
    try:
        expressions, genders, ages = attribute_eval.scan(directory)
    except FileNotFoundError as exc:
        raise _fail(str(exc)) from exc
    stage = default_attribute_stage(settings)
    with _progress() as progress:
        task = progress.add_task("scoring", total=len(expressions) + len(genders) + len(ages))
        report = attribute_eval.evaluate(
            directory, default_pipeline(settings), stage, lambda: progress.advance(task)
        )
    if plot is not None:
        attribute_eval.plot_confusion(report, plot)
    if fmt == "json":
        print(json.dumps(report, indent=2))
    else:
        attribute_eval.print_text(report, console)


@admin_app.command("create")
def admin_create(
    username: Annotated[str, typer.Option(help="Log-in name.")],
    password: Annotated[
        str, typer.Option(prompt=True, hide_input=True, confirmation_prompt=True, help="Password.")
    ],
    role: Annotated[str, typer.Option(help="admin, manager, associate or auditor.")] = "admin",
    store: Annotated[list[str] | None, typer.Option(help="Store id (repeatable).")] = None,
) -> None:
    """Create a staff account (by default an administrator, to bootstrap the server)."""
    from facecrm.crm import accounts
    from facecrm.crm.authz import SYSTEM

    user = _runtime().run(
        accounts.create_staff, username, password, role, store or [], principal=SYSTEM
    )
    console.print(f"Created {role} [bold]{user.username}[/] ({user.id}).")


def _staff_change(action: str, change: Callable[[Session], object]) -> None:
    _runtime().run(change)
    console.print(action)


@admin_app.command("list")
def admin_list(as_json: AsJson = False) -> None:
    """All staff accounts with their role and stores."""
    from facecrm.crm import accounts

    rows = [
        {
            "id": u.id,
            "username": u.username,
            "role": u.role,
            "active": u.active,
            "stores": [s.id for s in u.stores],
        }
        for u in _runtime().run(accounts.list_staff)
    ]
    _listing(rows, ("id", "username", "role", "active"), as_json)


@admin_app.command("disable")
def admin_disable(user: Annotated[str, typer.Argument(help="Username or id.")]) -> None:
    """Disable an account: its tokens, console sessions and live streams stop at once."""
    from facecrm.crm import accounts
    from facecrm.crm.authz import SYSTEM

    _staff_change(f"Disabled {user}.", lambda s: accounts.set_active(s, SYSTEM, user, active=False))


@admin_app.command("enable")
def admin_enable(user: Annotated[str, typer.Argument(help="Username or id.")]) -> None:
    """Enable a disabled account (tokens from before stay void: the user logs in again)."""
    from facecrm.crm import accounts
    from facecrm.crm.authz import SYSTEM

    _staff_change(f"Enabled {user}.", lambda s: accounts.set_active(s, SYSTEM, user, active=True))


@admin_app.command("password")
def admin_password(
    user: Annotated[str, typer.Argument(help="Username or id.")],
    password: Annotated[
        str,
        typer.Option(prompt=True, hide_input=True, confirmation_prompt=True, help="New password."),
    ],
) -> None:
    """Set a new password; every token issued before it stops working."""
    from facecrm.crm import accounts
    from facecrm.crm.authz import SYSTEM

    _staff_change(
        f"New password set for {user}; their sessions are logged out.",
        lambda s: accounts.set_password(s, SYSTEM, user, password),
    )


@admin_app.command("delete")
def admin_delete(
    user: Annotated[str, typer.Argument(help="Username or id.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete an account (the audit trail keeps its name)."""
    from facecrm.crm import accounts
    from facecrm.crm.authz import SYSTEM

    if not yes and not typer.confirm(f"Delete the account {user}?", default=False):
        raise typer.Exit(1)
    _staff_change(f"Deleted {user}.", lambda s: accounts.delete_staff(s, SYSTEM, user))


@stores_app.command("add")
def stores_add(code: str, name: str, as_json: AsJsonObject = False) -> None:
    """Add a store; prints its id (--json: {"id", "code", "name"}, for scripts)."""
    from facecrm.crm import accounts
    from facecrm.crm.authz import SYSTEM

    store = _runtime().run(accounts.create_store, code, name, SYSTEM)
    if as_json:
        print(json.dumps({"id": store.id, "code": store.code, "name": store.name}))
        return
    console.print(f"Store [bold]{store.code}[/] {store.name}: id [cyan]{store.id}[/]")


@stores_app.command("list")
def stores_list(as_json: AsJson = False) -> None:
    """All stores."""
    from facecrm.crm import accounts
    from facecrm.crm.authz import SYSTEM

    stores = _runtime().run(accounts.list_stores, SYSTEM)
    rows = [{"id": s.id, "code": s.code, "name": s.name} for s in stores]
    _listing(rows, ("id", "code", "name"), as_json)


@stores_app.command("qr")
def stores_qr(
    store: Annotated[str, typer.Argument(help="Store id or code.")],
    base_url: Annotated[
        str, typer.Option("--base-url", help="The server's address as customers' phones reach it.")
    ] = "http://localhost:8000",
    svg: Annotated[
        Path | None, typer.Option("--svg", help="Write the QR code (SVG) to this file.")
    ] = None,
    rotate: Annotated[
        bool, typer.Option("--rotate", help="A new link: QR codes printed so far stop working.")
    ] = False,
) -> None:
    """The store's self-enrollment link (`/self/<token>`) and its QR code for the entrance."""
    from facecrm.crm import selfservice
    from facecrm.crm.authz import SYSTEM
    from facecrm.web.qr import qr_svg

    found, token = _runtime().run(selfservice.link, SYSTEM, store, rotate)
    url = f"{base_url.rstrip('/')}/self/{token}"
    if svg is not None:
        svg.write_bytes(qr_svg(url))
    print(url)
    if svg is not None:
        err.print(f"QR code of store {found.code} written to {svg}", highlight=False)


@otp_app.command("outbox")
def otp_outbox(
    to: Annotated[
        str | None, typer.Option("--to", help="Only the codes to this e-mail address or phone.")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """The one-time codes waiting for the embedded sender (FACECRM_OTP_SENDER=outbox),
    newest first: a pilot's or a test's way to hand a customer their code before an SMS or
    e-mail sender is plugged in. Destinations are shown in clear; each read is audited."""
    from facecrm.crm import selfservice
    from facecrm.crm.authz import SYSTEM

    codes = _runtime().run(selfservice.pending_codes, SYSTEM, to)
    if as_json:
        keys = ("channel", "destination", "code", "expires_at", "body")
        rows = [{k: getattr(c, k) for k in keys} for c in codes]
        print(json.dumps(rows, indent=2, default=lambda at: at.isoformat()))
        return
    table = Table("destination", "code", "expires at (UTC)", "message")
    for c in codes:
        table.add_row(c.destination, c.code or "", f"{c.expires_at:%Y-%m-%d %H:%M:%S}", c.body)
    console.print(table)


@devices_app.command("list")
def devices_list(as_json: AsJson = False) -> None:
    """All devices, revoked ones included (their keys no longer work)."""
    from facecrm.crm import accounts

    rows = [
        {
            "id": d.id,
            "store_id": d.store_id,
            "kind": d.kind,
            "name": d.name,
            "created_at": d.created_at.isoformat(),
            "revoked_at": d.revoked_at.isoformat() if d.revoked_at else None,
        }
        for d in _runtime().run(accounts.list_devices, None)
    ]
    _listing(rows, ("id", "store_id", "kind", "name", "revoked_at"), as_json)


@devices_app.command("add")
def devices_add(
    store: Annotated[str, typer.Option(help="The store id.")],
    kind: Annotated[str, typer.Option(help="agent, pos or kiosk.")],
    name: Annotated[str, typer.Option(help="A label.")] = "",
    as_json: AsJsonObject = False,
) -> None:
    """Register a device; its API key is printed once and never stored (--json:
    {"id", "store_id", "kind", "name", "key"}, for scripts)."""
    from facecrm.crm import accounts
    from facecrm.crm.authz import SYSTEM

    device, key = _runtime().run(accounts.create_device, store, kind, name, principal=SYSTEM)
    if as_json:
        fields = {"id": device.id, "store_id": device.store_id, "kind": device.kind}
        print(json.dumps({**fields, "name": device.name, "key": key}))
        return
    console.print(f"Device {device.name} ({device.id}). API key (shown once, keep it safe):")
    print(key)


@devices_app.command("revoke")
def devices_revoke(device_id: Annotated[str, typer.Argument(help="The device id.")]) -> None:
    """Revoke a device's API key for good: its next request is refused."""
    from facecrm.crm import accounts
    from facecrm.crm.authz import SYSTEM

    _staff_change(
        f"Revoked device {device_id}.", lambda s: accounts.revoke_device(s, SYSTEM, device_id)
    )


def server_config(
    host: str | None = None,
    port: int | None = None,
    forwarded_allow_ips: str | None = None,
    workers: int = 1,
) -> uvicorn.Config:
    """The uvicorn configuration `facecrm serve` runs (proxy headers off unless trusted).

    One process: the app is built here (its start migrates). Several (`workers`): each
    worker process builds its own app (`server.worker_app`) on the schema the caller
    has migrated once, and uvicorn's supervisor restarts a worker that dies.
    """
    import uvicorn

    from facecrm.server import create_app

    settings = get_settings()
    trusted = forwarded_allow_ips or settings.forwarded_allow_ips
    app: Any = create_app() if workers == 1 else "facecrm.server:worker_app"
    # uvicorn trusts X-Forwarded-For from 127.0.0.1 unless told otherwise: anyone on the
    # host could then pose as any address and dodge the per-address log-in limit
    return uvicorn.Config(
        app,
        factory=workers > 1,
        workers=workers,
        host=host or settings.host,
        port=port or settings.port,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or "",
        # live alert streams stay open: do not let them hold a shutdown for more than 5 s
        timeout_graceful_shutdown=5,
        log_config=None,  # keep configure_logging's JSON lines (access log without queries)
    )


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Interface to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="TCP port.")] = None,
    forwarded_allow_ips: Annotated[
        str | None,
        typer.Option(
            envvar="FACECRM_FORWARDED_ALLOW_IPS",
            help="Comma-separated addresses of reverse proxies whose X-Forwarded-For is "
            "believed (the log-in limit then counts the real client). Default: none; "
            "set it only to your proxy's address, never '*' on an exposed port.",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Server processes on one port (PostgreSQL only: on SQLite the gallery "
            "and the live alerts live in one process).",
        ),
    ] = 1,
) -> None:
    """Run the API and the staff console (uvicorn) on the configured database."""
    import uvicorn

    from facecrm.server import check_workers

    configure_logging()
    settings = get_settings()
    check_workers(settings, workers)
    if workers == 1:
        uvicorn.Server(server_config(host, port, forwarded_allow_ips)).run()
        return
    from facecrm.crm.runtime import Runtime

    # once, here (and audited): not N workers racing to upgrade the schema
    Runtime(settings, migrate=True).close()
    os.environ["FACECRM_DATA_DIR"] = str(settings.data_dir)  # the workers' settings too
    from uvicorn.supervisors import Multiprocess

    config = server_config(host, port, forwarded_allow_ips, workers)
    # what `uvicorn.run` does for several workers, on this configuration
    Multiprocess(config, sockets=[config.bind_socket()]).run()


@app.command()
def agent(
    server: Annotated[str, typer.Option(help="The facecrm server, e.g. https://crm.example:8000")],
    camera: Annotated[
        list[str], typer.Option(help="RTSP/HTTP URL, device index or video file (repeatable).")
    ],
    api_key: Annotated[
        str, typer.Option(envvar="FACECRM_AGENT_KEY", help="The device key (devices add).")
    ],
    store: Annotated[str | None, typer.Option(help="Expected store id (checked).")] = None,
    realtime: Annotated[
        bool, typer.Option("--realtime/--fast", help="Video files at their frame rate or flat out.")
    ] = True,
    exit_when_done: Annotated[
        bool, typer.Option(help="Stop when every video file is processed and delivered.")
    ] = False,
    metrics_port: Annotated[int | None, typer.Option(help="Serve /metrics on this port.")] = None,
    summary_seconds: Annotated[
        float | None,
        typer.Option(min=1, help="Status line interval (FACECRM_AGENT_SUMMARY_SECONDS, 60)."),
    ] = None,
    heartbeat_seconds: Annotated[
        float | None,
        typer.Option(min=1, help="Camera health interval (FACECRM_AGENT_HEARTBEAT_SECONDS, 30)."),
    ] = None,
) -> None:
    """Run the store agent next to the cameras.

    With --exit-when-done a camera that gives no first frame (a missing or unreadable
    file, a bad device index) stops it at once with one `error:` line (exit 1).
    """
    import httpx

    from facecrm.agent.runner import Agent, AgentConfig, check_camera
    from facecrm.logs import mask_native_stderr
    from facecrm.vision.pipeline import build_pipeline

    if sys.stderr is sys.__stderr__:  # not under a test runner that captures it
        mask_native_stderr()  # OpenCV and ffmpeg print camera URLs from C
    configure_logging()
    settings = get_settings()
    if exit_when_done:  # before the server and the models: a typo fails in a second
        for source in camera:
            check_camera(source)
    try:
        me = httpx.get(f"{server}{API_PREFIX}/me", headers={"X-API-Key": api_key}, timeout=10)
        if me.status_code == 401:
            raise _fail("the server refused the device key")
        if store and me.is_success and store not in (me.json().get("stores") or []):
            raise _fail(f"this device key belongs to another store than {store}")
    except httpx.HTTPError:
        err.print("[yellow]server unreachable: events will wait in the local queue[/]")
    config = AgentConfig(
        server=server,
        api_key=api_key,
        cameras=tuple(camera),
        data_dir=settings.data_dir / "agent",
        realtime=realtime,
        exit_when_done=exit_when_done,
        metrics_port=metrics_port,
        summary_seconds=summary_seconds or settings.agent_summary_seconds,
        heartbeat_seconds=heartbeat_seconds or settings.agent_heartbeat_seconds,
    )
    from facecrm.vision.attributes import default_attribute_stage
    from facecrm.vision.second import build_second_opinion

    Agent(
        config,
        build_pipeline(settings),
        build_second_opinion(settings),
        attributes=lambda: default_attribute_stage(settings),
    ).run()


@audit_app.command("verify")
def audit_verify() -> None:
    """Check the hash chain: report every altered, inserted or deleted event (exit 1)."""
    report = _runtime().verify_audit()
    for problem in report.problems:
        err.print(f"[bold red]{problem}[/]")
    if not report.ok:
        raise typer.Exit(1)
    console.print(f"Audit trail intact: {report.checked} events verified.")


@audit_app.command("fingerprint")
def audit_fingerprint(text: str) -> None:
    """Print the fingerprint a search for TEXT leaves in the trail (searches are audited by
    fingerprint, never by their text: it may be a name or an e-mail address)."""
    from facecrm.crm import audit

    print(_runtime().run(audit.fingerprint, text))


def _since(value: str | None) -> datetime | None:
    """A `--since` option's ISO date or time (a usage error otherwise)."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError as exc:
        raise typer.BadParameter(
            f"not an ISO date or time: {value!r}", param_hint="--since"
        ) from exc


@audit_app.command("export")
def audit_export(
    since: Annotated[str | None, typer.Option(help="ISO date or time to start from.")] = None,
) -> None:
    """Print audit events as JSON lines (with their chain hashes)."""
    from facecrm.crm.auditlog import event_dict, events

    for item in _runtime().run(events, since=_since(since), limit=None):
        print(json.dumps(event_dict(item)))


@disputes_app.command("export")
def disputes_export(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="A file (created 0600); default stdout.")
    ] = None,
    store: Annotated[
        list[str] | None, typer.Option(help="A store id (repeat it); default every store.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="ISO date or time to start from.")] = None,
) -> None:
    """Write the disputed matches as JSON Lines for `facecrm eval --disputes` (format
    facecrm-disputes/1: times, store, camera, customer id, scores; no image, no template)."""
    from datetime import UTC

    from facecrm.crm import accounts, disputes
    from facecrm.crm.authz import SYSTEM
    from facecrm.private import write_file
    from facecrm.vision.pipeline import build_embedder

    start = _since(since)
    if start is not None and start.tzinfo is None:
        start = start.replace(tzinfo=UTC)
    runtime = _runtime()
    stores = store or [s.id for s in runtime.run(accounts.list_stores, SYSTEM)]
    window = disputes.Window(since=start, limit=None)
    settings = get_settings()
    lines = [json.dumps(disputes.header(stores, build_embedder(settings).model_id))]
    for store_id in stores:
        rows = runtime.run(disputes.report, SYSTEM, store_id, window)
        lines.extend(json.dumps(disputes.record(d)) for d in rows)
    text = "\n".join(lines) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        write_file(output, text.encode())
        err.print(f"Wrote {len(lines) - 1} disputed match(es) to {output}.")


@keys_app.command("rotate")
def keys_rotate(
    retire: Annotated[
        bool, typer.Option(help="Then delete master keys that no data key uses any more.")
    ] = False,
) -> None:
    """Add a new master key and re-wrap every customer's data key with it (no downtime)."""
    from facecrm.crm.authz import SYSTEM
    from facecrm.crm.vault import TemplateVault
    from facecrm.crypto import add_master_key, drop_master_keys

    settings = get_settings()
    vault = TemplateVault(_runtime())
    key_id = add_master_key(settings) if not settings.master_key else vault.keys.current_id
    count = vault.rotate_keys(SYSTEM)
    console.print(f"Master key {key_id} now wraps all data keys ({count} re-wrapped).")
    if retire and not settings.master_key:
        removed = drop_master_keys(settings, vault.master_keys_in_use() | {key_id})
        console.print(f"Retired master keys: {', '.join(removed) or 'none'}.")


@app.command()
def purge() -> None:
    """Apply the retention rules now (the server also does it every hour)."""
    from facecrm.crm.authz import SYSTEM
    from facecrm.crm.retention import purge as run_purge

    report = run_purge(_crm(), SYSTEM)
    console.print(
        f"Purged {report.visits} visit(s); forgot the faces of {report.unseen_customers} "
        f"customer(s) not seen for long; {report.expired_consents} consent(s) expired; "
        f"{report.alerts} alert(s), {report.audit_events} audit event(s) and "
        f"{report.erasure_entries} erasure-log entries past retention."
    )


@erasures_app.command("replay")
def erasures_replay(
    log_files: Annotated[
        list[Path] | None,
        typer.Option(
            "--from",
            exists=True,
            dir_okay=False,
            help="Also an erasure log exported with `facecrm erasures export` (repeatable).",
        ),
    ] = None,
) -> None:
    """After restoring a backup: erase again every logged customer it brought back."""
    from facecrm.crm import erasures
    from facecrm.crm.authz import SYSTEM

    report = erasures.replay(_crm(), SYSTEM, log_files or ())
    console.print(
        f"Erasure log: {report.logged} entries ({report.restored} written back); "
        f"erased {report.erased} customer(s) again."
    )


@erasures_app.command("export")
def erasures_export() -> None:
    """Print the erasure log as JSON lines (opaque references and times only), to keep
    apart from the database backups for as long as the oldest of them."""
    from facecrm.crm import erasures
    from facecrm.crm.authz import SYSTEM

    for line in _runtime().run(erasures.export, SYSTEM):
        print(json.dumps(line, sort_keys=True))


@app.command()
def demo() -> None:
    """A self-contained walkthrough: enroll, identify, a stranger is unknown, erase."""
    from facecrm.demo import DemoFailed, run

    try:
        run(console)
    except DemoFailed as exc:
        err.print(f"[bold red]demo failed:[/] {exc}")
        raise typer.Exit(1) from exc
