import shutil
from pathlib import Path

from scaling.presets import build_run
from scaling.train import run


def test_resume_continues_the_identical_loss_trajectory(tmp_path):
    common = {"steps": 10, "batch": 4, "seq": 32, "lr_warmup_steps": 3, "lr": 1e-2}
    straight = run(build_run("tiny", **common)).losses
    ckpt = tmp_path / "ckpt"
    saved = run(build_run("tiny", checkpoint_dir=str(ckpt), checkpoint_every=4, **common))
    assert saved.losses == straight
    # Pretend the job died after step 8: keep only the step-8 checkpoint, then resume.
    for step_dir in ckpt.iterdir():
        if step_dir.name != "8":
            shutil.rmtree(step_dir)
    resumed = run(build_run("tiny", checkpoint_dir=str(ckpt), resume=True, **common))
    assert resumed.start_step == 8
    assert resumed.losses == straight[8:]
    assert (Path(ckpt) / "10").exists()
