"""The gcloud commands of the TPU launcher (checked without running gcloud)."""
import os
import re
import shlex
import subprocess
import sys
import tarfile

import pytest

from openmoe2_jax import launch


def test_create_plain_and_spot():
    (plain,) = launch.commands("create", "moe", "us-east5-a", accelerator="v5p-256")
    assert shlex.join(plain) == ("gcloud compute tpus tpu-vm create moe --zone=us-east5-a "
                                 "--accelerator-type=v5p-256 --version=v2-alpha-tpuv5")
    (spot,) = launch.commands("create", "moe", "us-east5-a", project="p", accelerator="v5p-256", spot=True)
    assert spot[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
    assert "--spot" in spot and "--node-id=moe" in spot and "--project=p" in spot


def test_setup_copies_the_committed_source_tree_and_installs_a_supported_python_on_every_worker():
    archive, scp, ssh = launch.commands("setup", "moe", "z", repo="/src", python="3.13")
    assert archive == ["git", "-C", "/src", "archive", "--format=tar.gz",
                       "--output=/tmp/openmoe2_jax-moe-src.tar.gz", "HEAD"]
    assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--recurse" not in scp
    assert scp[5:7] == ["/tmp/openmoe2_jax-moe-src.tar.gz", "moe:~/openmoe2_jax-src.tar.gz"]
    assert "--worker=all" in scp and "--worker=all" in ssh
    steps = ssh[-1].removeprefix("--command=").split(" && ")
    assert steps[0] == "python3 -m pip install --user --quiet --upgrade uv"  # the system Python only bootstraps uv
    assert steps[1:4] == ["rm -rf ~/openmoe2_jax", "mkdir -p ~/openmoe2_jax",
                          "tar -xzf ~/openmoe2_jax-src.tar.gz -C ~/openmoe2_jax"]
    assert steps[4] == "~/.local/bin/uv venv --clear --python 3.13 ~/openmoe2_jax_venv"
    # jax[tpu] with exactly setup.py's jax bounds (read from the file, not from the launcher's source).
    bounds = re.search(r'"jax(>=[^"]+)"', open(os.path.join(os.path.dirname(__file__), "..", "setup.py")).read())[1]
    install = shlex.split(steps[5])
    # the project with the `gcs` extra (gs:// workdirs), its brackets quoted from the remote shell's globbing
    assert install[:4] == ["~/.local/bin/uv", "pip", "install", "--python"] and install[-1] == "~/openmoe2_jax[gcs]"
    assert steps[5].endswith(" ~/openmoe2_jax'[gcs]'")
    assert install[4] == "~/openmoe2_jax_venv/bin/python" and install[5].startswith("jax[tpu]")
    assert set(install[5].removeprefix("jax[tpu]").split(",")) == set(bounds.split(","))
    with pytest.raises(ValueError, match="--python='3.10'"):
        launch.commands("setup", "moe", "z", python="3.10")


def test_setup_archive_holds_tracked_files_only(tmp_path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "a.py").write_text("x = 1\n")
    git = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)
    git("init", "-q")
    git("add", "pkg/a.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "one")
    (repo / "runs" / "big").mkdir(parents=True)     # a local run and a virtualenv: never copied
    (repo / "runs" / "big" / "ckpt").write_text("x")
    (repo / ".venv").mkdir()
    (repo / "pkg" / "a.py").write_text("x = 2\n")   # an uncommitted edit: the commit is copied
    archive_cmd = launch.commands("setup", f"t{os.getpid()}", "z", repo=str(repo))[0]
    subprocess.run(archive_cmd, check=True)
    out = archive_cmd[-2].removeprefix("--output=")
    with tarfile.open(out) as tar:
        assert tar.getnames() == ["pkg", "pkg/a.py"]
        assert tar.extractfile("pkg/a.py").read() == b"x = 1\n"
    os.remove(out)


def test_run_starts_one_training_command_on_all_workers_with_overrides():
    (ssh,) = launch.commands("run", "moe", "z", config="configs/ablations/sec03_routing.py:ec,paper",
                             workdir="gs://b/runs/ec", overrides=["moe.topk_impl=auto", "config.train.steps=10"])
    command = ssh[-1].removeprefix("--command=")
    assert "--worker=all" in ssh
    assert ("~/openmoe2_jax_venv/bin/python -m openmoe2_jax.train --config=configs/ablations/sec03_routing.py:ec,paper "
            "--workdir=gs://b/runs/ec --config.moe.topk_impl=auto --config.train.steps=10") in command
    assert command.startswith("cd ~/openmoe2_jax && nohup ") and command.endswith("2>&1 &")
    with pytest.raises(ValueError, match="--workdir is required"):
        launch.commands("run", "moe", "z")


def test_run_takes_an_experiment_id_at_a_stated_scale():
    (ssh,) = launch.commands("run", "moe", "z", experiment="moetopk_100b_1e_8b1b7a_difflm", scale="paper",
                             workdir="gs://b/runs/tc", overrides=["train.steps=10"])
    assert ("-m openmoe2_jax.train --experiment=moetopk_100b_1e_8b1b7a_difflm --scale=paper "
            "--workdir=gs://b/runs/tc --config.train.steps=10") in ssh[-1]
    with pytest.raises(ValueError, match="--scale"):  # the scale is never assumed on a pod
        launch.commands("run", "moe", "z", experiment="sec03/tc", workdir="gs://b/x")
    with pytest.raises(ValueError, match="section 3 has"):
        launch.commands("run", "moe", "z", experiment="sec03/nope", scale="paper", workdir="gs://b/x")
    with pytest.raises(ValueError, match="--scale goes with --experiment"):
        launch.commands("run", "moe", "z", scale="paper", workdir="gs://b/x")


def test_logs_stop_delete():
    (logs,) = launch.commands("logs", "moe", "z", follow=True)
    assert "--worker=0" in logs and logs[-1].endswith("tail -f -n 200 ~/openmoe2_jax_train.log")
    (stop,) = launch.commands("stop", "moe", "z")
    assert "pkill -TERM -f openmoe2_jax.train" in stop[-1]   # SIGTERM: the trainer checkpoints and exits
    assert launch.commands("delete", "moe", "z")[0][:5] == ["gcloud", "compute", "tpus", "tpu-vm", "delete"]
    assert "queued-resources" in launch.commands("delete", "moe", "z", spot=True)[0]


def test_cli_dry_run_prints_and_runs_nothing():
    out = subprocess.run([sys.executable, "-m", "openmoe2_jax.launch", "create", "--name=moe",
                          "--zone=z", "--accelerator=v5p-8", "--dry_run"], capture_output=True, text=True,
                         env=dict(os.environ, PATH="/nonexistent"))  # no gcloud reachable: nothing runs
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("gcloud compute tpus tpu-vm create moe --zone=z --accelerator-type=v5p-8 "
                                  "--version=v2-alpha-tpuv5")
