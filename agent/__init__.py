"""gpuwarden node agent: reads GPUs (NVML) and the host (psutil), decides health, publishes
over MQTT. Never imports ``coordinator``."""
