"""launch/slurm/train.sbatch on a real SLURM cluster of two emulated nodes on this machine (slow: minutes).

The fixture installs Debian's slurmctld, slurmd, slurm-client and munge if they are missing
(needs root and apt), starts munged (as user munge), one slurmctld and two slurmd
(node1, node2) on 127.0.0.1 with their own ports, config and state in a temporary folder,
and stops every daemon it started, by pid, however the tests end.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from tests.launching import ROOT, assert_same_trajectory, env, free_port, make_data, rows, stable, train_args, wait_for

pytestmark = pytest.mark.slow

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
SBATCH = os.path.join(ROOT, "launch", "slurm", "train.sbatch")


def ensure_packages() -> None:
    if all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and cannot be installed here (needs root and apt-get): "
                    f"apt-get install {' '.join(PACKAGES)}")
    apt_env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=apt_env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], check=True, env=apt_env, capture_output=True)


def _free_run(n: int) -> int:
    """A port p such that p .. p+n-1 are all free."""
    for _ in range(200):
        base = random.randint(20000, 40000)
        try:
            for p in range(base, base + n):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")


class LocalCluster:
    """munged + slurmctld + slurmd node1, node2, all on 127.0.0.1, everything under ``root``."""

    def __init__(self, root: str):
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.conf = os.path.join(root, "slurm.conf")
        self.env = env(SLURM_CONF=self.conf)

    def _start(self, argv: list[str], log: str, **kw) -> subprocess.Popen:
        proc = subprocess.Popen(argv, stdout=open(os.path.join(self.root, log), "w"), stderr=subprocess.STDOUT,
                                env=self.env, **kw)
        self.procs.append(proc)
        return proc

    def start(self) -> None:
        import pwd

        os.chmod(self.root, 0o755)  # munged runs as user munge and must reach its folder
        munge = pwd.getpwnam("munge")
        mdir = os.path.join(self.root, "munge")
        os.makedirs(mdir, mode=0o700)
        with open(os.path.join(mdir, "munge.key"), "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(os.path.join(mdir, "munge.key"), 0o400)
        sdir = os.path.join(self.root, "socket")  # clients need to reach the socket: not private
        os.makedirs(sdir, mode=0o755)
        for path in (mdir, os.path.join(mdir, "munge.key"), sdir):
            os.chown(path, munge.pw_uid, munge.pw_gid)
        socket_path = os.path.join(sdir, "munge.socket")
        self._start(["munged", "--foreground", f"--socket={socket_path}", f"--key-file={mdir}/munge.key",
                     f"--log-file={mdir}/munged.log", f"--pid-file={mdir}/munged.pid", f"--seed-file={mdir}/seed"],
                    "munged.out", user=munge.pw_uid, group=munge.pw_gid)
        wait_for(lambda: os.path.exists(socket_path), 30, "munged's socket")

        port = _free_run(3)
        for d in ("state", "spool/node1", "spool/node2", "log"):
            os.makedirs(os.path.join(self.root, d))
        r = self.root
        with open(self.conf, "w") as f:
            f.write(f"""ClusterName=rlvrtest
SlurmctldHost={socket.gethostname()}(127.0.0.1)
SlurmctldPort={port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket_path}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool/%n
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.%n.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
MailProg=/bin/true
NodeName=node[1-2] NodeAddr=127.0.0.1 Port=[{port + 1}-{port + 2}] CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=node[1-2] Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
""")
        self._start(["slurmctld", "-D", "-f", self.conf], "slurmctld.out")
        wait_for(lambda: self.slurm("scontrol", "ping", check=False).returncode == 0, 60, "slurmctld")
        for node in ("node1", "node2"):
            self._start(["slurmd", "-D", "-N", node, "-f", self.conf], f"slurmd-{node}.out")
        wait_for(lambda: self.slurm("sinfo", "-h", "-t", "idle", "-o", "%D").stdout.strip() == "2", 90,
                 "two idle nodes")

    def slurm(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(argv, capture_output=True, text=True, env=self.env, cwd=ROOT, check=check, timeout=60)

    def job_state(self, job: str) -> str:
        out = self.slurm("scontrol", "show", "job", job, check=False).stdout
        return out.split("JobState=", 1)[1].split()[0] if "JobState=" in out else "GONE"

    def stop(self) -> None:
        try:
            if any(p.poll() is None for p in self.procs[1:2]):  # slurmctld up: end our jobs first
                self.slurm("scancel", "--user=root", check=False)
                wait_for(lambda: not self.slurm("squeue", "-h", check=False).stdout.strip(), 90, "jobs to end")
        finally:
            for proc in reversed(self.procs):  # slurmd, slurmctld, munged: the ones this test started
                if proc.poll() is None:
                    proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.fixture(scope="module")
def cluster():
    ensure_packages()
    root = tempfile.mkdtemp(prefix="rlvr-slurm-")
    c = LocalCluster(root)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def workdir():
    path = tempfile.mkdtemp(prefix="rlvr-slurm-run-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def submit(cluster, out_dir: str, log_dir: str, args: list[str]) -> str:
    result = cluster.slurm("sbatch", "--parsable", "--nodes=2", f"--output={log_dir}/slurm-%j.out", SBATCH, *args,
                           check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().split(";")[0]


def _args(qwen25_dir, data, out):
    return train_args(qwen25_dir, data, out, "trainer.max_steps=5", "checkpoint.every_steps=2")


@pytest.fixture(scope="module")
def straight_run(cluster, qwen25_dir, workdir):
    """The sbatch command of the README, 2 nodes x 1 process, ZeRO-3 over gloo, uninterrupted."""
    data = make_data(os.path.join(workdir, "data"), rows=8)
    out = os.path.join(workdir, "straight")
    cluster.env["MASTER_PORT"] = str(free_port())
    start = time.monotonic()
    job = submit(cluster, out, workdir, _args(qwen25_dir, data, out))
    wait_for(lambda: cluster.job_state(job) in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"), 900,
             f"job {job} to finish", poll=2)
    print(f"two-node SLURM run: {time.monotonic() - start:.0f} s")
    return job, out, data, open(os.path.join(workdir, f"slurm-{job}.out")).read()


def test_two_node_job_trains_in_one_process_group(cluster, straight_run):
    job, out, _, log = straight_run
    assert cluster.job_state(job) == "COMPLETED", log[-4000:]
    assert "2 nodes x 1 processes" in log
    assert "process group of 2: rank 0 on" in log and "(node node1, local rank 0), rank 1 on" in log
    assert "(node node2, local rank 0)" in log
    assert [r["step"] for r in rows(f"{out}/metrics.jsonl")] == [1, 2, 3, 4, 5]
    assert sorted(os.listdir(f"{out}/checkpoints")) == ["step_000004", "step_000005"]
    assert os.path.isfile(f"{out}/checkpoints/step_000005/COMPLETE")
    assert os.path.isfile(f"{out}/final/model.safetensors")


def test_warning_signal_checkpoints_requeues_and_resumes(cluster, straight_run, qwen25_dir, workdir):
    _, straight, data, _ = straight_run
    out = os.path.join(workdir, "preempted")
    cluster.env["MASTER_PORT"] = str(free_port())
    start = time.monotonic()
    job = submit(cluster, out, workdir, _args(qwen25_dir, data, out))
    wait_for(lambda: os.path.exists(f"{out}/metrics.jsonl") and rows(f"{out}/metrics.jsonl"), 900,
             "the first step", poll=0.2)
    # What sbatch --signal=USR1@600 sends before the time limit: SIGUSR1 to every process of the job's steps.
    cluster.slurm("scancel", "--signal=USR1", job)
    wait_for(lambda: cluster.job_state(job) == "PENDING", 300, "the job to requeue itself", poll=1)
    stopped_at = max(s for s in (int(n[5:]) for n in os.listdir(f"{out}/checkpoints") if n.startswith("step_")))
    # SLURM holds a requeued job for about two minutes before it may start again; skip the wait.
    cluster.slurm("scontrol", "update", f"JobId={job}", "StartTime=now")
    wait_for(lambda: cluster.job_state(job) in ("COMPLETED", "FAILED", "CANCELLED"), 900, "the requeued job", poll=2)
    print(f"preempted after step {stopped_at}, requeued, resumed: {time.monotonic() - start:.0f} s in all")
    log = open(os.path.join(workdir, f"slurm-{job}.out")).read()
    assert cluster.job_state(job) == "COMPLETED", log[-4000:]
    assert stopped_at < 5
    assert f"stopped after step {stopped_at} on SIGUSR1" in log
    assert "requeueing job" in log and f"job {job} (restart 1)" in log
    assert f"resumed from {out}/checkpoints/step_{stopped_at:06d}" in log
    # The interrupted run repeats the uninterrupted one, prompt for prompt.
    expected, got = rows(f"{straight}/metrics.jsonl"), rows(f"{out}/metrics.jsonl")
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5]
    assert_same_trajectory(expected, got, rtol=1e-6, atol=1e-7)
    assert [stable(r) for r in got] == [stable(r) for r in expected]
    assert rows(f"{out}/prompts.jsonl") == rows(f"{straight}/prompts.jsonl")


SYNTH_SBATCH = os.path.join(ROOT, "launch", "slurm", "synth_array.sbatch")


def test_synth_array_shards_then_the_dependent_merge_equal_one_run(cluster, workdir):
    """launch/slurm/synth_array.sbatch as a 2-task array on the demo recipe: the merge job it submits
    writes the same JSONL and counts as one unsharded run."""
    import json
    import sys

    from rlvr.synth.scenes import render_scenes

    images, out, single = (os.path.join(workdir, name) for name in ("synth-scenes", "synth", "synth-single"))
    render_scenes(images, 6, seed=1)
    args = ["--config", os.path.join(ROOT, "recipes", "synth", "demo.yaml"), "--images", images,
            f"instances.annotations={images}/annotations.json", "difficulty.enabled=false"]
    start = time.monotonic()
    result = cluster.slurm("sbatch", "--parsable", "--array=0-1", f"--output={workdir}/synth-%A_%a.out",
                           SYNTH_SBATCH, *args, "--out", out, check=False)
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]
    # the merge is queued from the array's start, so an empty queue means every job has ended
    wait_for(lambda: not cluster.slurm("squeue", "-h", check=False).stdout.strip(), 600, "the array and merge", poll=2)
    print(f"synthesis array of 2 + merge under SLURM: {time.monotonic() - start:.0f} s")
    logs = "".join(open(os.path.join(workdir, f"synth-{job}_{i}.out")).read() for i in (0, 1))
    assert os.path.exists(f"{out}/report.json"), logs[-3000:]
    assert "shard 0/2" in logs and "shard 1/2" in logs
    assert sorted(os.listdir(f"{out}/shards")) == ["0", "1"]
    subprocess.run([sys.executable, "-m", "rlvr.synth.hopchain", *args, "--out", single, "--no-progress"],
                   check=True, cwd=ROOT, env=env(), capture_output=True)
    merged, alone = (json.load(open(f"{d}/report.json")) for d in (out, single))
    assert merged["stages"] == alone["stages"] and merged["stages"]["verify"]["kept"] > 0
    for name in ("train.jsonl", "train_last_hop.jsonl", "train_second_half.jsonl"):
        assert rows(f"{out}/{name}") == rows(f"{single}/{name}"), name
