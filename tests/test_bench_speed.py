"""bench/speed.py's bookkeeping: the paired run and where each ratio comes from (no timing is asserted)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import speed  # noqa: E402


def own(loop, step_s, group="cross_attn", **extra):
    return dict(world="toy", device="cpu", group=group, batch=16, loop=loop, step_s=step_s, steps=40, total_s=9.0,
                peak_bytes=2**30, **extra)


def test_ratio_comes_from_the_paired_run_else_from_the_plain_row():
    rows = [own("plain", 0.10), own("cg", 0.20), own("esd", 0.09),
            dict(own("cg", None), paired=True, method_step_s=0.25, plain_step_s=0.11, pairs_timed=9,
                 speedup_steps=0.44, speedup_min_max=[0.4, 0.5])]
    speed.add_rates(rows)
    cg, esd = rows[1], rows[2]
    assert cg["ratio_steps"] == 0.44 and abs(cg["ratio_rows"] - 3 * 0.44) < 1e-12  # cg trains 3 rows per element
    assert cg["pair"]["plain_step_s"] == 0.11
    assert abs(esd["ratio_steps"] - 0.10 / 0.09) < 1e-12 and "pair" not in esd  # no paired run: own processes
    table = "\n".join(speed.main_table(rows, "toy"))
    assert "250 / 110 (9 pairs)" in table and table.count("\n| cg |") == 1, "the paired row is folded into its method's"


def test_paired_run_trains_a_copy_and_times_every_pair_after_the_first():
    spec = dict(world="toy", device="cpu", pixels=32, group="cross_attn", batch=2, loop="esd", steps=4,
                short_setup=True, paired=True)
    model = speed.build_model("toy", "cpu", 32)
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    row = speed.measure_paired(model, spec)
    assert row["pairs_timed"] == 3 and row["method_step_s"] > 0 and row["plain_step_s"] > 0
    low, high = row["speedup_min_max"]
    assert low <= row["speedup_steps"] <= high
    after = model.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the plain loop trained the method's own UNet"
