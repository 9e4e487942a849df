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


def test_resume_with_prepared_data_continues_the_same_batches(tmp_path, prepared_dir):
    """Batches are a function of (seed, index) and the checkpoint stores the loader's next
    index, so a run resumed at step 4 sees batches 4.. and reproduces the straight run's
    training and validation losses exactly."""
    common = {"steps": 8, "batch": 4, "seq": 32, "lr_warmup_steps": 2, "lr": 1e-2}
    common.update(data=str(prepared_dir), eval_every=4, eval_batches=1)
    straight = run(build_run("tiny", **common))
    ckpt = tmp_path / "ckpt"
    run(build_run("tiny", checkpoint_dir=str(ckpt), checkpoint_every=4, **common))
    shutil.rmtree(ckpt / "8")  # the job died after step 4
    resumed = run(build_run("tiny", checkpoint_dir=str(ckpt), resume=True, **common))
    assert resumed.start_step == 4
    assert resumed.losses == straight.losses[4:]
    assert resumed.final_val_loss == straight.final_val_loss
    other_seed = run(build_run("tiny", **{**common, "seed": 1}))
    assert other_seed.losses[4:] != straight.losses[4:]
