"""bench/quality.py --quick: held-out concepts (never used to choose a setting), one of each kind, one seed per
prompt, the trained rows shorter (bench/quality.py QUICK says which rows run on which concept, and why). The bars
are the quality targets loosened for the shorter training and the smaller evaluation set (one image moves a rate
by 1/12 to 1/36 here)."""
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
    found = quality.run_bench(out, quality.quick_plan(), quality.QUICK["overrides"], quality.QUICK["seeds_per_prompt"],
                              log=lambda m: None)
    return {(r["concept"], r["row"]): r for r in found}


def rows_named(records, *names):
    chosen = [r for (_, row), r in records.items() if row in names]
    assert chosen, names  # the subset runs them
    return chosen


def test_quick_subset_is_held_out_and_covers_every_kind(records):
    assert set(records) == {(c, row) for c, rows in quality.QUICK["rows"].items() for row in rows}
    assert not any(is_tuning(c) for c, _ in records)
    assert {r["kind"] for r in records.values()} == {"object", "style", "color"}


def test_the_original_draws_every_concept(records):
    for r in rows_named(records, "original"):
        assert r["erased_rate"] >= 0.9, r


def test_alternative_rows_erase_keep_and_hit(records):
    for r in rows_named(records, "uce_alt", "cg_alt"):
        assert r["erased_rate"] <= 0.10 and r["paraphrase_erased_rate"] <= 0.15, r
        assert r["preserved_drop"] <= 0.06, r
        # The target loosened as the others, and not above what the original model itself draws when asked for the
        # alternative (alt_ceiling: on red -> green the toy model's dotted and striped greens are dull, some olive).
        assert r["alt_hit_rate"] >= min(0.70, r["alt_ceiling"] - 0.10), r
        if r["kind"] != "object":
            assert r["kept_rate"] >= 0.80, r


def test_dt_erases_a_held_out_shape_and_keeps_the_rest(records):
    for r in rows_named(records, "dt"):
        assert r["kind"] == "object", r  # the subset runs DT on the shape only (CI time)
        assert r["erased_rate"] <= 0.10 and r["paraphrase_erased_rate"] <= 0.15, r
        assert r["preserved_drop"] <= 0.06, r


def test_a_fill_erased_without_alternative_keeps_its_shape_and_colour(records):
    # the style's anchor, "without concept": "a red dotted circle" is steered to "a red circle"
    r = records[("dotted", "uce")]
    assert r["erased_rate"] <= 0.10 and r["paraphrase_erased_rate"] <= 0.15, r
    assert r["preserved_drop"] <= 0.06 and r["kept_rate"] >= 0.80, r
