"""Every result the README quotes comes from a committed summary.

The README marks each block of quoted results with the file it comes from:
``<!-- numbers from PATH -->`` ... ``<!-- end numbers -->``. Every number in such a block must
appear in that file (the summary ``landscape reproduce`` wrote and the README's command
regenerates), so a table copied by hand, rounded differently or left over from an older run
fails here. Figures the README shows from the same folder must exist.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"<!-- numbers from (\S+) -->(.*?)<!-- end numbers -->", re.S)
NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w])")


def _numbers(text: str) -> set[str]:
    return {n.lstrip("+") for n in NUMBER.findall(text)}


def test_quoted_results_appear_in_their_committed_summaries() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = BLOCK.findall(readme)
    assert blocks, "the README quotes no results block"
    for path, text in blocks:
        source = ROOT / path
        assert source.is_file(), f"README quotes {path}, which is not committed"
        have = _numbers(source.read_text())
        missing = sorted(_numbers(re.sub(r"`[^`]*`", "", text)) - have)
        assert not missing, (
            f"numbers in the README's block from {path} that the file does not hold: {missing}"
        )


def test_no_placeholder_or_stale_profile_is_left() -> None:
    readme = (ROOT / "README.md").read_text()
    assert not re.search(r"\b[A-Z0-9_]+_RESULTS\b", readme)
    assert "--profile official " not in readme and "configs/official.yaml" not in readme
    for link in re.findall(r"\]\((docs/figures/[^)]+\.png)\)", readme):
        assert (ROOT / link).is_file(), link
