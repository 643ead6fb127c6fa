"""A training loop that checkpoints, tells gpuwarden when, and resumes where it stopped.

It fits ``y = 3x + 1`` by gradient descent (pure Python: the point is the loop around it):

* at start it resumes from the latest checkpoint in ``--checkpoint-dir``, if there is one;
* every ``--checkpoint-every`` steps it saves (atomically: write, then rename) and records the
  time on its pod (annotation ``gpuwarden.io/last-checkpoint``), so preemption prefers to stop
  tasks that lose little, and a node fault reports the work lost since then;
* on SIGTERM - an eviction: a preemption, or its node going out of service - it saves at once
  and exits 0 within its grace period (``gpuwarden.io/checkpoint-grace-seconds``).

The pod its owner recreates after the eviction arrives gated, joins the same task (same
``gpuwarden.io/task`` label), waits for admission at the task's old place in the queue, and
resumes from the checkpoint: the checkpoint directory must outlive the pod (a volume).

Run it here (``python examples/train_with_checkpoints.py --steps 200``), or on Kubernetes as a
Job like this one::

    apiVersion: batch/v1
    kind: Job
    metadata: {name: fit-line, namespace: research}
    spec:
      backoffLimit: 3
      podFailurePolicy:              # an eviction is no failure of the job: just run again
        rules: [{action: Ignore, onPodConditions: [{type: DisruptionTarget}]}]
      template:
        metadata:
          labels: {gpuwarden.io/task: fit-line, gpuwarden.io/priority-class: training}
          annotations: {gpuwarden.io/checkpoint-grace-seconds: "60", gpuwarden.io/max-requeues: "3"}
        spec:
          schedulingGates: [{name: gpuwarden.io/admission}]   # gpuwarden admits it
          serviceAccountName: trainer                          # may get and patch its pod
          terminationGracePeriodSeconds: 60
          restartPolicy: Never
          containers:
            - name: train
              image: registry.example.com/fit-line:1            # with gpuwarden installed
              command: [python, train_with_checkpoints.py, --checkpoint-dir, /ckpt]
              env:                                              # the downward API: this pod
                - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
                - {name: POD_NAMESPACE, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
              resources: {limits: {nvidia.com/gpu: 1}}
              volumeMounts: [{name: ckpt, mountPath: /ckpt}]
          volumes: [{name: ckpt, persistentVolumeClaim: {claimName: fit-line-ckpt}}]
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: Role
    metadata: {name: record-checkpoints, namespace: research}
    rules: [{apiGroups: [""], resources: [pods], verbs: [get, patch]}]
    ---
    apiVersion: rbac.authorization.k8s.io/v1
    kind: RoleBinding
    metadata: {name: trainer-records-checkpoints, namespace: research}
    roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: record-checkpoints}
    subjects: [{kind: ServiceAccount, name: trainer, namespace: research}]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

from coordinator.checkpoint import POD_NAME_ENV, CheckpointError, record_checkpoint

CHECKPOINT_FILE = "checkpoint.json"
LEARNING_RATE = 0.1
# the data: y = 3x + 1 on 100 points in [0, 1)
POINTS = [(i / 100, 3 * (i / 100) + 1) for i in range(100)]


@dataclass
class State:
    step: int = 0
    w: float = 0.0
    b: float = 0.0


def train_step(state: State) -> None:
    """One full-batch gradient step on the mean squared error."""
    n = len(POINTS)
    grad_w = sum(2 * (state.w * x + state.b - y) * x for x, y in POINTS) / n
    grad_b = sum(2 * (state.w * x + state.b - y) for x, y in POINTS) / n
    state.w -= LEARNING_RATE * grad_w
    state.b -= LEARNING_RATE * grad_b
    state.step += 1


def load(directory: Path) -> State | None:
    path = directory / CHECKPOINT_FILE
    if not path.is_file():
        return None
    return State(**json.loads(path.read_text()))


def save(directory: Path, state: State) -> None:
    """Write then rename: a crash mid-save leaves the previous checkpoint whole."""
    directory.mkdir(parents=True, exist_ok=True)
    partial = directory / (CHECKPOINT_FILE + ".partial")
    with partial.open("w") as out:
        json.dump(asdict(state), out)
        out.flush()
        os.fsync(out.fileno())
    partial.replace(directory / CHECKPOINT_FILE)


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.stopping = False
        self.on_pod = bool(os.environ.get(POD_NAME_ENV))

    def stop(self, signum: int, _frame: FrameType | None) -> None:
        print(f"{signal.Signals(signum).name}: saving and stopping", flush=True)
        self.stopping = True

    def checkpoint(self, state: State) -> None:
        save(self.args.checkpoint_dir, state)
        print(f"checkpoint at step {state.step}", flush=True)
        if not self.on_pod:
            return  # not in a pod: nobody to tell
        try:
            record_checkpoint(kube=self.args.kube)
        except CheckpointError as exc:
            # the checkpoint is saved; only the scheduler's estimate of lost work suffers
            print(f"warning: checkpoint not recorded on the pod: {exc}", file=sys.stderr)

    def run(self) -> int:
        state = load(self.args.checkpoint_dir)
        if state is None:
            state = State()
            print("starting fresh", flush=True)
        else:
            print(f"resumed from step {state.step}", flush=True)
        while state.step < self.args.steps and not self.stopping:
            train_step(state)
            if state.step % self.args.checkpoint_every == 0:
                self.checkpoint(state)
            time.sleep(self.args.step_seconds)
        if state.step % self.args.checkpoint_every:
            self.checkpoint(state)  # the steps since the last one: stopping, or done
        if self.stopping:
            print(f"stopped at step {state.step}", flush=True)
        else:
            print(f"done at step {state.step}: w={state.w:.3f} b={state.b:.3f}", flush=True)
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="A training loop that checkpoints, tells gpuwarden when, and resumes."
    )
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--checkpoint-every", type=int, default=50)
    parser.add_argument("--checkpoint-dir", type=Path, default=Path("checkpoints"))
    parser.add_argument("--step-seconds", type=float, default=0.05, help="pretend work per step")
    parser.add_argument("--kube", default="in-cluster", help="in-cluster | auto | kubeconfig:PATH")
    trainer = Trainer(parser.parse_args(argv))
    signal.signal(signal.SIGTERM, trainer.stop)
    signal.signal(signal.SIGINT, trainer.stop)
    return trainer.run()


if __name__ == "__main__":
    sys.exit(main())
