"""The local back end: marks kept in a file under ``--state`` for clusters without a
scheduler gpuwarden talks to (:mod:`.actuator`), and task governance on the built-in simulated
cluster for the demo (:mod:`.sim_governor`)."""
