"""Identify throughput (issue 12 item 4): each cut in CPU per request keeps the results."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from sqlalchemy import event

from facecrm.crm import accounts, db
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.models import Customer
from facecrm.crm.service import FaceCRM, Photo
from facecrm.server import create_app
from facecrm.vision import image as image_module
from facecrm.vision.align import FivePointAligner
from facecrm.vision.embed import OnnxEmbedder, sface_onnx
from facecrm.vision.models import sface_path
from facecrm.vision.onnx_models import dequantize
from facecrm.vision.pipeline import FacePipeline

from server import serve

PORTRAITS = [
    "identities/barack_obama/1.jpg",
    "identities/joe_biden/2.jpg",
    "identities/kit_harington/2.jpg",
    "identities/rose_leslie/1.jpg",
    "distractors/angelina_jolie.jpg",
    "distractors/kate_siegel.jpg",
]


def test_sface_runs_without_prelu_and_gives_the_same_templates(
    pipeline: FacePipeline,
    load,  # type: ignore[no-untyped-def]
    model_cache: Path,
    tmp_path: Path,
) -> None:
    """The shipped SFace's per-channel PRelu is rewritten as Relu + depthwise 1x1
    convolutions (half the CPU in onnxruntime); the templates of real faces stay those of
    the plainly folded model to float rounding (far below the threshold floor's margin)."""
    served = sface_onnx(model_cache)
    graph = onnx.load(
        str(model_cache / "models" / "face_recognition_sface_2021dec_fp32_dwprelu.onnx")
    )
    assert not [n for n in graph.graph.node if n.op_type == "PRelu"]
    plain_path = tmp_path / "sface_plain.onnx"
    dequantize(sface_path(), plain_path)
    assert [n for n in onnx.load(str(plain_path)).graph.node if n.op_type == "PRelu"]
    plain = OnnxEmbedder(plain_path, input_size=112, mean=0.0, std=1.0)
    aligner = FivePointAligner(112)
    chips = []
    for relative in PORTRAITS:
        image = load(relative)
        chips += [aligner.align(image, f) for f in pipeline.detector.detect(image)]
    assert len(chips) >= len(PORTRAITS)
    ours, reference = served.embed(chips), plain.embed(chips)
    assert np.abs(ours - reference).max() < 1e-5
    # what the cascade uses: similarities between faces, equal to 1e-5
    assert np.abs(ours @ ours.T - reference @ reference.T).max() == pytest.approx(0, abs=1e-5)


def test_identify_reads_the_named_customers_once(crm: FaceCRM, load, faces_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """The service loads what the answer shows (name, preferred name, tier) with the
    decision; the route no longer queries the same customers a second time."""
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "A", "Store A", SYSTEM)
        _, key = accounts.create_device(session, store.id, "agent", principal=SYSTEM)
    barack = crm.enroll(
        "Barack", [Photo("1.jpg", load("identities/barack_obama/1.jpg"))], CURRENT, "cli", SYSTEM
    )
    with db.transaction(crm.sessions) as session:
        session.get_one(Customer, barack.id).preferred_name = "Barry"
    statements: list[str] = []

    def seen(_conn, _cursor, statement: str, *_: object) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement)

    with serve(create_app(crm)) as url:
        photo = (faces_dir / "identities/barack_obama/2.jpg").read_bytes()
        event.listen(crm.engine, "before_cursor_execute", seen)
        try:
            r = httpx.post(
                f"{url}/api/v1/identify",
                files={"image": ("2.jpg", photo, "image/jpeg")},
                headers={"X-API-Key": key},
                timeout=60,
            )
        finally:
            event.remove(crm.engine, "before_cursor_execute", seen)
    assert r.status_code == 200, r.text
    (face,) = r.json()["faces"]
    assert face["customer"]["id"] == barack.id
    assert (face["customer"]["name"], face["customer"]["preferred_name"]) == ("Barack", "Barry")
    assert face["customer"]["tier"] == "standard"
    named = [s for s in statements if "customers.name" in s and "FROM customers" in s]
    assert len(named) == 1, named


def test_identify_holds_a_photo_slot_until_its_decisions(
    crm: FaceCRM, faces_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decode slot is held from the upload to the decisions, not only while decoding:
    at most `max_concurrent_decodes` requests hold a decoded photo and run the pipeline."""
    with db.transaction(crm.sessions) as session:
        store = accounts.create_store(session, "A", "Store A", SYSTEM)
        _, key = accounts.create_device(session, store.id, "agent", principal=SYSTEM)
    held: list[bool] = []
    identify = crm.identify

    def watched(*args: object, **kwargs: object) -> object:
        held.append(bool(getattr(image_module._held, "slot", False)))
        return identify(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(crm, "identify", watched)
    with serve(create_app(crm)) as url:
        r = httpx.post(
            f"{url}/api/v1/identify",
            files={"image": ("1.jpg", (faces_dir / "identities/barack_obama/1.jpg").read_bytes())},
            headers={"X-API-Key": key},
            timeout=60,
        )
    assert r.status_code == 200, r.text
    assert held == [True]
