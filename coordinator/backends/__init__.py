"""Back ends: how the coordinator acts on a cluster, one package each, behind the one
:class:`coordinator.actuators.Actuator` protocol the remediator sees (and
:class:`coordinator.task_governance.TaskGovernance` for what happens to the work).

- ``kubernetes``: node marks, leader election, pods and task governance, agent certificates
  and the admission webhook; the only code that imports ``kubernetes``;
- ``slurm``: drain, resume, reboot and checkpoint-aware requeue through Slurm's commands; the
  only code that runs them;
- ``local``: marks kept in a file under ``--state`` (systemd installs without a scheduler,
  the demo), and governance on the built-in simulated cluster.

``tests/test_backend_boundaries.py`` holds each package to its boundary.
"""
