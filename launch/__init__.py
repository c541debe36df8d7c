"""Cloud TPU VMs and pods from a workstation: wraps `gcloud compute tpus` (tpu-vm and queued-resources).

  python -m openmoe2_jax.launch create --name=moe --zone=us-east5-a --accelerator=v5p-256 [--spot]
  python -m openmoe2_jax.launch setup  --name=moe --zone=us-east5-a          # copy + install, every worker
  python -m openmoe2_jax.launch run    --name=moe --zone=us-east5-a \
      --experiment=sec03/ec --scale=paper --workdir=gs://bucket/runs/sec03/ec \
      --override=config.moe.topk_impl=auto      # or --config=FILE[:arg] instead of --experiment
  python -m openmoe2_jax.launch logs   --name=moe --zone=us-east5-a [--follow]
  python -m openmoe2_jax.launch stop   --name=moe --zone=us-east5-a          # SIGTERM: checkpoint + exit
  python -m openmoe2_jax.launch delete --name=moe --zone=us-east5-a

Every action takes --dry_run, which prints the exact gcloud commands instead of running them.

`setup` copies only the source tree of the repository's committed HEAD (`git archive`: no local runs,
virtualenvs or uncommitted edits, so what runs on the pod is a commit you can name) and, on every
worker, builds a virtualenv with a supported Python (`--python`, default 3.12) through `uv`, which
fetches a standalone Python build: the TPU VM images (`v2-alpha-tpuv5`, `v2-alpha-tpuv6e`,
`tpu-ubuntu2204-base`) are Ubuntu 22.04, whose system `python3` is 3.10, below this project's floor.
`jax[tpu]` is installed with the bounds this installation of openmoe2_jax admits (read from its own
package metadata, so the pod gets the JAX range the tests ran on), and the project with its `gcs`
extra (a pod's workdir is gs://).
`run` starts the same command on all workers; the trainer calls jax.distributed.initialize() on a
multi-host TPU VM, so each process reads its own slice of the data and orbax writes the checkpoint
cooperatively. `--spot` uses queued resources with spot capacity; preemption sends SIGTERM, the
trainer saves at the next step boundary, and the same `run` resumes it.
"""
from __future__ import annotations

import importlib.metadata
import re
import shlex

ACTIONS = ("create", "setup", "run", "logs", "stop", "delete")
REMOTE_DIR = "~/openmoe2_jax"
REMOTE_ARCHIVE = "~/openmoe2_jax-src.tar.gz"
VENV = "~/openmoe2_jax_venv"
LOG = "~/openmoe2_jax_train.log"
PYTHONS = ("3.11", "3.12", "3.13")  # what setup.py admits


def jax_tpu_requirement() -> str:
    """`jax[tpu]` with the version bounds of this installation's own `jax` requirement."""
    for requirement in importlib.metadata.requires("openmoe2_jax") or ():
        name, bounds = re.match(r"([A-Za-z0-9_.-]+)\s*([^;]*)", requirement).groups()
        if name.lower() == "jax":
            return f"jax[tpu]{bounds.strip()}"
    raise RuntimeError("openmoe2_jax's package metadata names no jax requirement; reinstall with `pip install .`")


def _common(zone: str, project: str) -> list[str]:
    return [f"--zone={zone}"] + ([f"--project={project}"] if project else [])


def _ssh(name, zone, project, command: str, worker: str = "all") -> list[str]:
    return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, *_common(zone, project),
            f"--worker={worker}", f"--command={command}"]


def commands(action: str, name: str, zone: str, project: str = "", accelerator: str = "v5p-8",
             runtime: str = "v2-alpha-tpuv5", spot: bool = False, repo: str = ".",
             config: str = "configs/base.py", workdir: str | None = None,
             overrides=(), follow: bool = False, python: str = "3.12", experiment: str = "",
             scale: str = "") -> list[list[str]]:
    """The command lines of `action` (pure: tested against the documented syntax).

    All are gcloud commands except `setup`'s first, the local `git archive` of the source tree.
    run: `experiment` (an ID secNN/variant or a study run name) at `scale` (required with it: a pod
    run's scale is stated, never assumed) replaces `config`; both are checked here, before any ssh.
    """
    if action not in ACTIONS:
        raise ValueError(f"action {action!r}: expected one of {ACTIONS}")
    if not name or not zone:
        raise ValueError("--name and --zone are required")
    if python not in PYTHONS:
        raise ValueError(f"--python={python!r}: expected one of {PYTHONS} (the Pythons openmoe2_jax supports)")
    if action == "create":
        if spot:
            return [["gcloud", "compute", "tpus", "queued-resources", "create", name, *_common(zone, project),
                     f"--node-id={name}", f"--accelerator-type={accelerator}",
                     f"--runtime-version={runtime}", "--spot"]]
        return [["gcloud", "compute", "tpus", "tpu-vm", "create", name, *_common(zone, project),
                 f"--accelerator-type={accelerator}", f"--version={runtime}"]]
    if action == "setup":
        archive = f"/tmp/openmoe2_jax-{name}-src.tar.gz"
        uv = "~/.local/bin/uv"
        install = " && ".join([
            # uv from PyPI into the system Python's user site; it then fetches a standalone CPython.
            "python3 -m pip install --user --quiet --upgrade uv",
            f"rm -rf {REMOTE_DIR}", f"mkdir -p {REMOTE_DIR}", f"tar -xzf {REMOTE_ARCHIVE} -C {REMOTE_DIR}",
            f"{uv} venv --clear --python {python} {VENV}",
            # the project with its `gcs` extra: a pod's workdir is gs:// (brackets quoted from the remote
            # shell's globbing, ~ left unquoted for it to expand)
            f"{uv} pip install --python {VENV}/bin/python {shlex.quote(jax_tpu_requirement())} "
            f"{REMOTE_DIR}'[gcs]'",
        ])
        return [
            ["git", "-C", repo, "archive", "--format=tar.gz", f"--output={archive}", "HEAD"],
            ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive, f"{name}:{REMOTE_ARCHIVE}",
             *_common(zone, project), "--worker=all"],
            _ssh(name, zone, project, install),
        ]
    if action == "run":
        if not workdir:
            raise ValueError("--workdir is required for run (a gs:// path on a pod)")
        if experiment:
            from openmoe2_jax.configs import scales  # pylint: disable=import-outside-toplevel
            from openmoe2_jax.experiments import registry  # pylint: disable=import-outside-toplevel
            if scale not in scales.SCALES:
                raise ValueError(f"--scale={scale!r}: with --experiment give one of {', '.join(scales.SCALES)}")
            registry.resolve(experiment)  # ValueError naming the ID and what exists
            what = [f"--experiment={experiment}", f"--scale={scale}"]
        elif scale:
            raise ValueError("--scale goes with --experiment (a config file sets its own scale: FILE:variant,scale)")
        else:
            what = [f"--config={config}"]
        train = ["-m", "openmoe2_jax.train", *what, f"--workdir={workdir}"]
        train += [f"--{o}" if o.startswith("config.") else f"--config.{o}" for o in overrides]
        line = f"{VENV}/bin/python " + " ".join(shlex.quote(a) for a in train)  # ~ unquoted: the remote shell expands it
        return [_ssh(name, zone, project, f"cd {REMOTE_DIR} && nohup {line} > {LOG} 2>&1 &")]
    if action == "logs":
        return [_ssh(name, zone, project, f"tail {'-f ' if follow else ''}-n 200 {LOG}", worker="0")]
    if action == "stop":
        return [_ssh(name, zone, project, "pkill -TERM -f openmoe2_jax.train || true")]
    return [["gcloud", "compute", "tpus", "queued-resources", "delete", name, *_common(zone, project),
             "--force", "--quiet"] if spot else
            ["gcloud", "compute", "tpus", "tpu-vm", "delete", name, *_common(zone, project), "--quiet"]]
