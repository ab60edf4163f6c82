"""bench/quality.py --quick: held-out concepts (never used to choose a setting), each kind, fewer steps, one seed
per prompt. The bars are the quality targets loosened for the shorter training and the smaller evaluation set (one
image moves a rate by 1/12 to 1/36 here)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import quality  # noqa: E402

from erasure_core.toyworld.splits import is_tuning  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    out = tmp_path_factory.mktemp("quality")
    rows = [row for row in quality.ROWS if row.name in quality.QUICK["rows"]]
    found = quality.run_bench(out, quality.QUICK["concepts"], rows, quality.QUICK["overrides"],
                              quality.QUICK["seeds_per_prompt"], log=lambda m: None)
    return {(r["concept"], r["row"]): r for r in found}


def test_quick_subset_is_held_out_and_covers_every_kind(records):
    concepts = {c for c, _ in records}
    assert not any(is_tuning(c) for c in concepts)
    assert {r["kind"] for r in records.values()} == {"object", "style", "color"}


def test_the_original_draws_every_concept(records):
    for concept in quality.QUICK["concepts"]:
        assert records[concept, "original"]["erased_rate"] >= 0.9


@pytest.mark.parametrize("row", ["cg_alt", "uce_alt"])
def test_alternative_rows_erase_keep_and_hit(records, row):
    for concept in quality.QUICK["concepts"]:
        r = records[concept, row]
        assert r["erased_rate"] <= 0.10 and r["paraphrase_erased_rate"] <= 0.15, r
        assert r["preserved_drop"] <= 0.06, r
        assert r["alt_hit_rate"] >= 0.70, r
        if r["kind"] != "object":
            assert r["kept_rate"] >= 0.80, r


def test_dt_erases_with_its_kinds_defaults(records):
    for concept in quality.QUICK["concepts"]:
        r = records[concept, "dt"]
        assert r["preserved_drop"] <= 0.06, r
        if r["kind"] != "color":  # DT does not erase a colour; it says so before training (test_defaults.py)
            assert r["erased_rate"] <= 0.10, r
