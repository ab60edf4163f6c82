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


def test_parts_of_a_gpu_run_merge_into_one_report_with_each_world_in_its_section(tmp_path):
    gpu = dict(cpu="x", cpu_threads=16, torch="2", diffusers="0", gpu="Some GPU")
    fitted = dict(world="sdxl", device="cuda", loop="cg", option="default fitted to 24 GB: micro-batches of 1",
                  batch=2, steps=2, plan_settings="cg, cross_attn full weights", plan_bytes=18 * 2**30,
                  peak_bytes=16 * 2**30, plan_training_bytes=13 * 2**30, training_peak_bytes=9 * 2**30, step_s=1.4)
    memory = dict(command="python bench/speed.py --memory --worlds sdxl", device=gpu, seconds=0, complete=False,
                  rows=[], option_rows=[], memory_rows=[fitted])
    main = dict(command="python bench/speed.py --worlds sd15", device=gpu, seconds=90, rows=[
        dict(own("plain", 0.11), world="sd15", device="cuda", batch=4),
        dict(own("esd", 0.23), world="sd15", device="cuda", batch=4),
        dict(own("esd", None), world="sd15", device="cuda", batch=4, paired=True, method_step_s=0.22,
             plain_step_s=0.12, pairs_timed=11, speedup_steps=0.5, speedup_min_max=[0.4, 0.6])], option_rows=[])
    report = speed.merge_reports([memory, main])
    assert report["command"].count("python bench/speed.py") == 2 and report["complete"] is False
    assert report["rows"][1]["ratio_steps"] == 0.5, "rates are computed on the joined rows"
    text = speed.write_markdown(tmp_path / "speed.md", report)
    assert "cut short" in text and "SD1.5-shaped UNet on GPU" in text and "Run on Some GPU" in text
    sdxl = text[text.index("### SDXL at 1024 px"):]
    assert "| cg | cg, cross_attn full weights; default fitted to 24 GB: micro-batches of 1 | 18.00 | 16.00 | 13.00 " \
           "| 9.00 | 1.40 at 2 |" in sdxl
    assert "Memory by option" not in text, "no SD1.5 memory rows were measured: no section for them"
