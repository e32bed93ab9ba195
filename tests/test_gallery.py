"""Gallery search, open-set decisions, thresholds and the eval metrics."""

from __future__ import annotations

import numpy as np
import pytest

from facecrm.eval.metrics import Pair, Probe, identification, verification
from facecrm.gallery.gallery import Gallery
from facecrm.gallery.index import ExactIndex, HnswIndex
from facecrm.gallery.threshold import Calibration, load_calibration


def _unit(rng: np.random.Generator, n: int, dim: int = 128) -> np.ndarray:
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _near(rng: np.random.Generator, v: np.ndarray, noise: float) -> np.ndarray:
    out = v + noise * rng.standard_normal(v.shape).astype(np.float32)
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


class TestIndexes:
    @pytest.mark.slow
    def test_exact_and_hnsw_agree_on_rank1(self) -> None:
        rng = np.random.default_rng(1)
        vectors = _unit(rng, 20_000)
        ids = np.arange(10, 20_010, dtype=np.int64)
        exact, ann = ExactIndex(128), HnswIndex(128, capacity=len(ids))
        exact.add(ids, vectors)
        ann.add(ids, vectors)
        queries = _near(rng, vectors[rng.choice(len(ids), 500, replace=False)], 0.05)
        e_ids, e_sims = exact.search(queries, 1)
        a_ids, a_sims = ann.search(queries, 1)
        agreement = float(np.mean(e_ids[:, 0] == a_ids[:, 0]))
        assert agreement >= 0.99
        same = e_ids[:, 0] == a_ids[:, 0]
        assert np.allclose(e_sims[same, 0], a_sims[same, 0], atol=1e-4)

    @pytest.mark.parametrize("kind", [ExactIndex, HnswIndex])
    def test_remove_takes_a_vector_out_of_search(self, kind: type) -> None:
        rng = np.random.default_rng(2)
        vectors = _unit(rng, 50)
        index = kind(128)
        index.add(np.arange(50), vectors)
        index.remove(np.array([7]))
        ids, _ = index.search(vectors[7:8], 3)
        assert 7 not in ids[0].tolist()
        assert len(index) == 49

    def test_exact_search_on_empty_index(self) -> None:
        ids, sims = ExactIndex(128).search(np.zeros((2, 128), np.float32), 5)
        assert ids.shape == (2, 0) and sims.shape == (2, 0)


class TestOpenSet:
    def _gallery(self) -> tuple[Gallery, np.ndarray]:
        rng = np.random.default_rng(3)
        people = _unit(rng, 3)
        gallery = Gallery(128)
        # customer "a" has two looks; "b" and "c" one each
        templates = np.stack([people[0], _near(rng, people[0], 0.3), people[1], people[2]])
        gallery.add([1, 2, 3, 4], ["a", "a", "b", "c"], templates)
        return gallery, templates

    def test_best_template_of_a_customer_counts(self) -> None:
        gallery, templates = self._gallery()
        (decision,) = gallery.identify(templates[1:2], threshold=0.9)
        assert decision.match is not None and decision.match.customer_id == "a"
        assert decision.match.template_id == 2
        assert decision.match.similarity == pytest.approx(1.0, abs=1e-5)

    def test_below_threshold_is_unknown(self) -> None:
        gallery, _ = self._gallery()
        stranger = _unit(np.random.default_rng(99), 1)
        (decision,) = gallery.identify(stranger, threshold=0.5)
        assert decision.match is None
        assert decision.best is not None and decision.best.similarity < 0.5

    def test_one_customer_is_never_given_to_two_faces(self) -> None:
        gallery, templates = self._gallery()
        rng = np.random.default_rng(4)
        closer, farther = _near(rng, templates[2], 0.02), _near(rng, templates[2], 0.08)
        decisions = gallery.identify(np.stack([farther, closer]), threshold=0.5)
        assert decisions[1].match is not None and decisions[1].match.customer_id == "b"
        assert decisions[0].match is None or decisions[0].match.customer_id != "b"

    def test_remove_customer(self) -> None:
        gallery, templates = self._gallery()
        gallery.remove_customer("a")
        (decision,) = gallery.identify(templates[0:1], threshold=0.9)
        assert decision.match is None
        assert gallery.customers() == 2 and len(gallery) == 2

    def test_large_gallery_switches_to_ann(self) -> None:
        rng = np.random.default_rng(5)
        vectors = _unit(rng, 300)
        gallery = Gallery(128, ann_min_size=200)
        gallery.add(range(300), [f"c{i}" for i in range(300)], vectors)
        assert gallery.uses_ann
        decisions = gallery.identify(_near(rng, vectors[:20], 0.02), threshold=0.8)
        assert [d.match.customer_id for d in decisions if d.match] == [f"c{i}" for i in range(20)]


class TestThreshold:
    def test_lower_fmr_means_higher_threshold(self) -> None:
        rng = np.random.default_rng(6)
        cal = Calibration.fit("m", rng.normal(0.2, 0.1, 5000), rng.normal(0.8, 0.1, 50))
        thresholds = [cal.threshold(f) for f in (1e-2, 1e-3, 1e-4, 1e-5)]
        assert thresholds == sorted(thresholds)
        assert cal.fmr_at(cal.threshold(1e-4)) <= 1.0001e-4

    def test_never_accepts_an_observed_impostor(self) -> None:
        cal = Calibration.fit("m", [0.1, 0.2, 0.3, 0.95])
        assert cal.threshold(0.4) > 0.95

    @pytest.mark.parametrize("fmr", [0.0, 1.0, -1e-3])
    def test_rejects_impossible_rates(self, fmr: float) -> None:
        with pytest.raises(ValueError):
            Calibration.fit("m", [0.1, 0.2]).threshold(fmr)

    def test_shipped_calibrations_load(self) -> None:
        for model_id in ("dlib-resnet-v1", "sface-2021dec"):
            cal = load_calibration(model_id)
            assert cal.impostor_pairs > 100
            assert cal.genuine_mean is not None and cal.genuine_mean > cal.threshold(1e-3)

    def test_unknown_model_has_no_calibration(self) -> None:
        with pytest.raises(LookupError, match="facecrm eval"):
            load_calibration("onnx-000000000000")


class TestMetrics:
    def test_verification_by_hand(self) -> None:
        pairs = [Pair(0.9, True), Pair(0.7, True), Pair(None, True), Pair(0.8, False)]
        pairs += [Pair(0.001 * i, False) for i in range(196)]
        v = verification(pairs, threshold=0.75)
        # accepted: 0.9 (genuine), 0.8 (impostor); rejected genuine: 0.7 and the missing face
        assert v["accuracy"] == pytest.approx(197 / 200)
        assert v["best_accuracy"] == pytest.approx(198 / 200)
        tar = v["tar_at_far"]
        assert isinstance(tar, dict)
        # 197 impostors at FAR 1% allow one to pass (0.8): both found genuine pairs pass
        assert tar["0.01"] == pytest.approx(2 / 3)
        assert tar["0.001"] is None  # fewer than 1000 impostor pairs

    def test_identification_by_hand(self) -> None:
        probes = [
            Probe(True, 0.9, True),
            Probe(True, 0.6, True),
            Probe(True, 0.95, False),  # nearest is someone else
            Probe(True, None, False),  # no face
        ] + [Probe(False, s, False) for s in (0.1, 0.2, 0.7)]
        r = identification(probes, threshold=0.5)
        assert r["rank1"] == pytest.approx(0.5)
        assert r["fpir"] == pytest.approx(1 / 3)
        assert r["fnir"] == pytest.approx(0.5)
        at = r["fnir_at_fpir"]
        assert isinstance(at, dict)
        assert at["0.01"] == pytest.approx(0.75)  # threshold above 0.7: only 0.9 is kept
