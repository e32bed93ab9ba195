"""The cascade as served: identify ms per face for customers and strangers through the face
service (`FaceCRM.identify`, per photo divided by its faces: detection, both embeddings,
the gallery search, the SFace templates read and decrypted, the audit events and the
commit), on SQLite, against dlib alone on the same gallery.

    python benchmarks/served_cascade_bench.py [--repeat 3]
    python benchmarks/served_cascade_bench.py --smoke    # tests/data, once, seconds

Customers: every identity of identities/ + more/identities/ enrolled with its first
photo; probes are their other photos (customers), and the distractors and the group
photo scenes/multiface.jpg (strangers). The
dlib-alone rows are the same service with the cascade switched off
(`FACECRM_EMBEDDER=dlib-native` would change the embedder, so the cascade is removed from
the runtime instead).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from facecrm.config import configure
from facecrm.crm.authz import SYSTEM
from facecrm.crm.consent_text import CURRENT
from facecrm.crm.service import FaceCRM, Photo
from facecrm.vision.image import read_image

from common import faces_dir, link_model_cache, machine, smoke_faces


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="tests/data, once, seconds")
    parser.add_argument("--model-cache", type=Path, help="reuse converted models from here")
    args = parser.parse_args()
    if args.smoke:
        args.repeat = 1
    faces = smoke_faces() if args.smoke else faces_dir()
    data_dir = Path(tempfile.mkdtemp(prefix="facecrm-served-"))
    link_model_cache(data_dir, args.model_cache)
    settings = configure(data_dir=data_dir, threads=1)
    crm = FaceCRM(settings, migrate=True)
    folders = sorted(
        f
        for source in (faces / "identities", faces / "more" / "identities")
        if source.is_dir()
        for f in source.iterdir()
        if f.is_dir()
    )
    customers, strangers = [], []
    for folder in folders:
        photos = sorted(folder.iterdir())
        try:
            crm.enroll(
                folder.name,
                [Photo(photos[0].name, read_image(photos[0], settings))],
                CURRENT,
                "kiosk",
                SYSTEM,
            )
        except Exception:  # a photo the quality gate refuses, a relative already enrolled
            continue
        customers += [read_image(p, settings) for p in photos[1:]]
    strangers = [read_image(p, settings) for p in sorted((faces / "distractors").iterdir())]
    strangers.append(read_image(faces / "scenes" / "multiface.jpg", settings))  # nobody enrolled
    second = crm.second_opinion
    assert second is not None and crm.runtime.cascade is not None
    print(
        f"machine: {machine()}; {len(customers)} customer photos, "
        f"{len(strangers)} stranger photos\n"
    )
    print("| path | photos | faces named | mean ms per face | SFace runs per face |")
    print("| --- | ---: | ---: | ---: | ---: |")
    cascade = crm.runtime.cascade
    for label, on in (("dlib alone", False), ("cascade", True)):
        crm.runtime.__dict__["cascade"] = cascade if on else None
        for kind, images in (("customers", customers), ("strangers", strangers)):
            times, named, faces_n = [], 0, 0
            runs = second.faces_embedded
            for _ in range(args.repeat):
                for img in images:
                    t0 = time.perf_counter()
                    result = crm.identify(img, SYSTEM)
                    times.append((time.perf_counter() - t0) / max(len(result), 1))
                    named += sum(r.match is not None for r in result)
                    faces_n += len(result)
            per_face_runs = (second.faces_embedded - runs) / max(faces_n, 1)
            print(
                f"| {label}, {kind} | {len(images)} | {named // args.repeat} | "
                f"{statistics.mean(times) * 1000:.1f} | {per_face_runs:.2f} |",
                flush=True,
            )
    crm.close()


if __name__ == "__main__":
    main()
