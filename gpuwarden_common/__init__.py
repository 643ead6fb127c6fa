"""What the agent and the coordinator share: the wire contract, the health vocabulary,
broker connection settings and logging set-up. Nothing here does I/O at import time."""
