"""The gcloud commands of the TPU launcher (checked without running gcloud)."""
import os
import shlex
import subprocess
import sys

import pytest

from openmoe2_jax import launch


def test_create_plain_and_spot():
    (plain,) = launch.commands("create", "moe", "us-east5-a", accelerator="v5p-256")
    assert shlex.join(plain) == ("gcloud compute tpus tpu-vm create moe --zone=us-east5-a "
                                 "--accelerator-type=v5p-256 --version=v2-alpha-tpuv5")
    (spot,) = launch.commands("create", "moe", "us-east5-a", project="p", accelerator="v5p-256", spot=True)
    assert spot[:5] == ["gcloud", "compute", "tpus", "queued-resources", "create"]
    assert "--spot" in spot and "--node-id=moe" in spot and "--project=p" in spot


def test_setup_copies_and_installs_on_every_worker():
    scp, ssh = launch.commands("setup", "moe", "z")
    assert scp[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "--recurse"] and "--worker=all" in scp
    assert "--worker=all" in ssh and "jax[tpu]" in ssh[-1] and "pip install" in ssh[-1]


def test_run_starts_one_training_command_on_all_workers_with_overrides():
    (ssh,) = launch.commands("run", "moe", "z", config="openmoe2_jax/configs/ablations/sec03_routing.py:ec,paper",
                             workdir="gs://b/runs/ec", overrides=["moe.topk_impl=auto", "config.train.steps=10"])
    command = ssh[-1].removeprefix("--command=")
    assert "--worker=all" in ssh
    assert ("python3 -m openmoe2_jax.train --config=openmoe2_jax/configs/ablations/sec03_routing.py:ec,paper "
            "--workdir=gs://b/runs/ec --config.moe.topk_impl=auto --config.train.steps=10") in command
    assert command.startswith("cd ~/openmoe2_jax && nohup ") and command.endswith("2>&1 &")
    with pytest.raises(ValueError, match="--workdir is required"):
        launch.commands("run", "moe", "z")


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
