"""The process's shared resources: settings, database, keys, audit chain and face pipeline.

One `Runtime` per process (the server, a CLI command, a script), shared by the services
built on it (`vault.TemplateVault`, `service.FaceCRM`, the alert service). Opening one is
cheap: it checks that the schema is at head and never upgrades an existing database
(`facecrm migrate`, the server's start, `facecrm demo` and `facecrm.open` do, through
`migrate=True`); the face models load on the first photo.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import cached_property
from typing import TYPE_CHECKING, Concatenate, ParamSpec, TypeVar

from sqlalchemy.orm import Session

from facecrm import private
from facecrm.config import Settings
from facecrm.crm import audit, auditchain, db
from facecrm.crm.authz import SYSTEM
from facecrm.crypto import KeyProvider, key_provider
from facecrm.keys import derived_key

if TYPE_CHECKING:
    from facecrm.gallery.cascade import CascadeCalibration
    from facecrm.gallery.threshold import Calibration
    from facecrm.vision.pipeline import FacePipeline
    from facecrm.vision.second import SecondOpinion

P = ParamSpec("P")
T = TypeVar("T")


def default_pipeline(settings: Settings) -> FacePipeline:
    """The process-wide pipeline for `settings`; imported on first use, so that commands that
    never see a face (listings, accounts, keys) start without loading OpenCV and the models."""
    from facecrm.vision import pipeline

    return pipeline.default_pipeline(settings)


class Runtime:
    """Engine, sessions, settings, master keys, audit chain and pipeline of one process.

    `keys` replaces the configured master keys (e.g. a KMS client implementing
    `crypto.KeyProvider`). With `migrate` the schema is brought to head first; without
    it an outdated schema raises `SchemaOutdatedError` (a brand-new empty database is
    created at head either way: there is nothing in it to convert).
    """

    def __init__(
        self,
        settings: Settings,
        pipeline: FacePipeline | None = None,
        *,
        keys: KeyProvider | None = None,
        migrate: bool = False,
    ) -> None:
        self.settings = settings
        private.make_dir(self.settings.data_dir, own=True)  # keys, secret, database: 0700
        self.engine = db.make_engine(self.settings.resolved_database_url)
        # the revision found on opening (None: a database facecrm never migrated)
        self.migrated_from: str | None = None
        if migrate:
            self.migrated_from = db.migrate(self.engine)
        else:
            db.require_current(self.engine)
        self.sessions = db.session_factory(self.engine)
        self.keys: KeyProvider = keys or key_provider(self.settings)
        self._pipeline = pipeline
        self._second: SecondOpinion | None = None
        self.audit_key = derived_key(self.settings, "audit-chain")
        self.audit_head = self.settings.data_dir / "audit-head.json"
        # audit events are sealed inside the transaction that records them
        auditchain.install(
            self.sessions,
            self.audit_key,
            self.audit_head,
            derived_key(self.settings, audit.QUERY_KEY_PURPOSE),
        )
        if migrate:
            self._audit_migration()

    def _audit_migration(self) -> None:
        """Audit a schema change this process made (`facecrm migrate`, the server's start);
        nothing when the schema was at head already. A schema change alters what the trail
        and every record mean, so the trail says when it happened and from what."""
        head = db.current_revision(self.engine)
        if head == self.migrated_from:
            return
        with db.transaction(self.sessions) as session:
            audit.record(
                session,
                SYSTEM,
                "schema_migrated",
                from_revision=self.migrated_from,
                to_revision=head,
            )

    @property
    def pipeline(self) -> FacePipeline:
        """The face pipeline (the process-wide default one loads on first use)."""
        if self._pipeline is None:
            self._pipeline = default_pipeline(self.settings)
        return self._pipeline

    @property
    def model_id(self) -> str:
        return self.pipeline.model_id

    @cached_property
    def calibration(self) -> Calibration:
        from facecrm.gallery.threshold import load_calibration

        return load_calibration(self.model_id, self.settings.data_dir, self.settings.calibration)

    @property
    def threshold(self) -> float:
        """The similarity at which the embedder alone accepts a face as a customer (the
        single-model path, and customers without second-stage templates in the cascade)."""
        return self.calibration.threshold(self.settings.target_fmr)

    @cached_property
    def cascade(self) -> CascadeCalibration | None:
        """The two-stage calibration, when the default embedder (dlib) runs and its
        calibration has a cascade section; None keeps the single-model path
        (`FACECRM_EMBEDDER=sface|onnx|dlib-native`, or a calibration without one)."""
        from facecrm.gallery.threshold import load_cascade

        if self.settings.embedder != "dlib":
            return None
        cascade = load_cascade(self.model_id, self.settings.data_dir, self.settings.calibration)
        return cascade if cascade is not None and cascade.first.model_id == self.model_id else None

    @property
    def second_opinion(self) -> SecondOpinion | None:
        """The cascade's second embedder (loaded on first use), or None without a cascade."""
        if self.cascade is None:
            return None
        if self._second is None:
            from facecrm.vision.second import default_second_opinion

            self._second = default_second_opinion(self.settings)
        return self._second

    @property
    def decision_version(self) -> str:
        """A short digest of what an agent decides with besides the templates (threshold,
        target FMR, cascade calibration): part of the gallery's ETag, so a server restarted
        with another calibration makes every agent fetch it, not only after a gallery change."""
        cascade = None if self.cascade is None else self.cascade.to_json()
        rule = {"threshold": self.threshold, "fmr": self.settings.target_fmr, "cascade": cascade}
        return hashlib.sha256(json.dumps(rule, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def first_threshold(self) -> float:
        """The first model's similarity a named face reaches at least: the cascade's first
        stage threshold, or the single-model threshold."""
        if self.cascade is None:
            return self.threshold
        return self.cascade.skip_below(self.settings.target_fmr)

    def run(
        self, operation: Callable[Concatenate[Session, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`operation(session, ...)` in one transaction: committed, or rolled back on error.

        For the CLI and scripts, so that they hold no session of their own; what it returns
        stays readable after the commit (sessions do not expire objects on commit).
        """
        with db.transaction(self.sessions) as session:
            return operation(session, *args, **kwargs)

    def verify_audit(self) -> auditchain.Report:
        """Check the audit trail's hash chain (see `auditchain`)."""
        return auditchain.verify(self.sessions, self.audit_key, self.audit_head)

    def close(self) -> None:
        """Release the database connections."""
        self.engine.dispose()
