"""Back ends: how the coordinator acts on a cluster, one package each, behind the one
:class:`coordinator.actuators.Actuator` protocol the remediator sees.

``slurm`` lives here; the Kubernetes (``coordinator/kube.py``, ``kube_governor.py``) and
local (``coordinator/local_actuator.py``) back ends move in with the same shape later.
"""
