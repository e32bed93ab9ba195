"""`facecrm eval --plot`: the ROC on a log FAR axis only where the impostor pairs support it."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from conftest import Cli
from facecrm.config import Settings
from facecrm.eval.report import far_regions, too_few_impostors


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    return width, height


def _eval(cli: Cli, data_dir: Path, faces_dir: Path, plot: Path, fmr: str) -> str:
    result = cli(
        data_dir,
        "eval",
        str(faces_dir / "identities"),
        "--workers",
        "1",
        "--no-cascade",
        "--format",
        "json",
        "--plot",
        str(plot),
        env={"FACECRM_TARGET_FMR": fmr},
    )
    assert result.returncode == 0, result.stderr
    return " ".join(result.stderr.split())


@pytest.fixture()
def impostors(faces_dir: Path) -> int:
    """Impostor pairs of the test set (every photo has a face: see test_cli)."""
    per_identity = [
        len([p for p in d.iterdir() if p.is_file()]) for d in (faces_dir / "identities").iterdir()
    ]
    photos = sum(per_identity)
    return photos * (photos - 1) // 2 - sum(k * (k - 1) // 2 for k in per_identity)


def test_too_few_impostor_pairs_draws_no_roc_and_says_so(
    cli: Cli, faces_dir: Path, tmp_path: Path, settings: Settings, impostors: int
) -> None:
    """The test set has tens of impostor pairs: a ROC at FAR 0.001 would rest on nothing."""
    assert impostors < 1000
    plot = tmp_path / "eval.png"
    stderr = _eval(cli, settings.data_dir, faces_dir, plot, "0.001")
    assert f"too few impostor pairs for a ROC at FAR 0.001: {impostors} impostor pairs" in stderr
    assert "at least 1000 (1/FAR) needed" in stderr
    assert _png_size(plot)[0] == 600  # the score histogram only: one 5-inch panel at 120 dpi


def test_enough_impostor_pairs_draws_the_roc_beside_the_histogram(
    cli: Cli, faces_dir: Path, tmp_path: Path, settings: Settings, impostors: int
) -> None:
    fmr = 0.05
    assert impostors >= 1 / fmr
    plot = tmp_path / "eval.png"
    stderr = _eval(cli, settings.data_dir, faces_dir, plot, str(fmr))
    assert "too few" not in stderr
    assert _png_size(plot)[0] == 1200  # ROC + histogram


def test_far_regions_count_the_impostor_pairs_behind_each_decade() -> None:
    assert far_regions(50) == [(0.02, 0.1, 1, 5), (0.1, 1.0, 5, 50)]
    assert far_regions(1000) == [
        (0.001, 0.01, 1, 10),
        (0.01, 0.1, 10, 100),
        (0.1, 1.0, 100, 1000),
    ]
    assert too_few_impostors(999, 1e-3) is not None
    assert too_few_impostors(1000, 1e-3) is None
