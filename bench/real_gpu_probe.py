"""Prove the real NVML path on a machine with NVIDIA GPUs (run from the repo root).

    python bench/real_gpu_probe.py OUTDIR [--seconds 60]

1. ``gpuwarden-agent --once`` against the real driver (the first thing an operator runs);
2. in-process timings of one collection and one full snapshot (collect + checks + verdict +
   encode), and which NVML reads the GPU does not support;
3. the XID event watcher registering on the real GPUs;
4. a ``--seconds`` run of the real agent process publishing to the embedded broker, with a GPU
   load in the middle (PyTorch, if installed), sampling the agent's CPU and RSS every second.

Everything it sees goes to OUTDIR (summary.json plus the raw outputs); progress goes to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiomqtt
import psutil

from agent.daemon import Agent
from agent.nvml_collector import GpuCollector
from agent.settings import parse_settings
from agent.sim.fake_pynvml import FakeNvml
from agent.xid_events import XidEventWatcher
from coordinator.embedded_broker import EmbeddedBroker
from gpuwarden_common.wire import encode

ROOT = Path(__file__).resolve().parent.parent


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


SIM: list[str] = []  # ["--gpu-backend", "sim"] with --sim: rehearse this script without a GPU


def nvml_module() -> Any:
    if SIM:

        return FakeNvml(gpus=8)
    import pynvml  # noqa: PLC0415 - only the real run needs the driver's bindings

    return pynvml


def run_once(out: Path) -> dict[str, Any]:
    say("gpuwarden-agent --once")
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "--once", "--http", "off", "--kmsg", "off", *SIM],
        capture_output=True, timeout=120, cwd=ROOT, check=False,
    )
    wall = time.perf_counter() - t
    (out / "once.json").write_bytes(proc.stdout)
    (out / "once.stderr.txt").write_bytes(proc.stderr)
    result: dict[str, Any] = {"rc": proc.returncode, "wall_s": round(wall, 3)}
    if proc.returncode == 0:
        state = json.loads(proc.stdout)
        result.update(health=state["health"], action=state["action"], gpus=len(state["gpus"]),
                      driver=state.get("driver_version"),
                      names=sorted({g["name"] for g in state["gpus"]}),
                      findings=[f"{f['code']}@{f.get('gpu_index')}" for f in state["findings"]])
    say(f"  rc={proc.returncode} wall={wall:.2f}s {result.get('health')}")
    return result


def in_process_timings() -> dict[str, Any]:

    say("in-process collector timings")
    pynvml = nvml_module()
    collector = GpuCollector(pynvml)
    collector.start()
    wall, cpu = [], []
    for _ in range(30):
        w, c = time.perf_counter(), time.process_time()
        collector.collect()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    unsupported = {str(k): list(v) for k, v in collector.unsupported().items()}
    states, errors = collector.collect()
    collector.shutdown()

    settings = parse_settings(["--http", "off", "--kmsg", "off", *SIM], {})
    agent = Agent(settings, pynvml, boot_id="probe")

    async def snapshots() -> tuple[list[float], list[float]]:
        await agent.start_nvml()
        sw, sc = [], []
        for _ in range(30):
            w, c = time.perf_counter(), time.process_time()
            state, _ = await agent.sample()
            encode(state)
            sw.append(time.perf_counter() - w)
            sc.append(time.process_time() - c)
        return sw, sc

    snap_wall, snap_cpu = asyncio.run(snapshots())
    agent.collector.shutdown()

    say("XID event watcher on the real GPUs")
    pynvml = nvml_module()
    pynvml.nvmlInit()
    watcher = XidEventWatcher(pynvml, on_xid=lambda e: say(f"  xid {e}"),
                              on_lost=lambda i, e: say(f"  lost {i} {e}"))
    started = watcher.start()
    registered = list(watcher.registered)
    time.sleep(1.0)
    t = time.perf_counter()
    watcher.stop()
    stop_s = time.perf_counter() - t
    pynvml.nvmlShutdown()

    def ms(xs: list[float]) -> dict[str, float]:
        xs = sorted(xs)
        return {"p50_ms": round(statistics.median(xs) * 1e3, 2),
                "max_ms": round(xs[-1] * 1e3, 2)}

    return {
        "collect_wall": ms(wall), "collect_cpu": ms(cpu),
        "snapshot_wall": ms(snap_wall), "snapshot_cpu": ms(snap_cpu),
        "unsupported_reads": unsupported, "collect_errors": [str(e) for e in errors],
        "gpu0": json.loads(encode(states[0])) if states else None,
        "xid_watcher": {"started": started, "registered": registered,
                        "stop_s": round(stop_s, 3)},
    }


def _rss_by_mapping(pid: int, top: int = 10) -> dict[str, float]:
    """Where a process's resident memory is, by mapped file ([heap], [anon] for the rest)."""
    totals: dict[str, float] = {}
    name = "[anon]"
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if not fields:
                continue
            if "-" in fields[0] and len(fields) >= 5:  # a mapping header line
                name = fields[5] if len(fields) > 5 else "[anon]"
            elif fields[0] == "Rss:":
                totals[name] = totals.get(name, 0.0) + int(fields[1]) / 1024
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return {k: round(v, 1) for k, v in ranked}


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def gpu_load(seconds: float) -> subprocess.Popen[bytes] | None:
    code = (
        "import time, torch\n"
        "a = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16)\n"
        f"end = time.time() + {seconds}\n"
        "while time.time() < end:\n"
        "    (a @ a).sum().item()\n"
    )
    try:
        return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    except OSError:
        return None


async def run_fleet(out: Path, seconds: float) -> dict[str, Any]:

    port = 18830
    broker = EmbeddedBroker("127.0.0.1", port)
    await broker.start()
    received: list[tuple[str, bytes, float]] = []

    async def listen() -> None:
        async with aiomqtt.Client("127.0.0.1", port) as client:
            await client.subscribe("gpuwarden/#", qos=1)
            async for msg in client.messages:
                payload = msg.payload if isinstance(msg.payload, bytes) else b""
                received.append((str(msg.topic), payload, time.time()))

    listener = asyncio.create_task(listen())
    await asyncio.sleep(0.5)
    say(f"agent run for {seconds:.0f}s, publishing to the embedded broker")
    log = (out / "agent-run.log").open("wb")
    agent = subprocess.Popen(  # noqa: ASYNC220 - starting it does not block; waits are threaded
        [sys.executable, "-m", "agent", "--broker", f"mqtt://127.0.0.1:{port}", "--cluster",
         "probe", "--node", "gpu-probe", "--interval", "10", "--http", "127.0.0.1:9402",
         "--spool", "/tmp/gpuwarden-probe-spool", *SIM],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    ps = psutil.Process(agent.pid)
    samples: list[dict[str, float]] = []
    load = None
    t0 = time.monotonic()
    await asyncio.sleep(3)  # start-up is not steady state
    cpu0 = sum(ps.cpu_times()[:2])
    tw0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        elapsed = time.monotonic() - t0
        if load is None and elapsed > seconds / 3:
            say("  GPU load on")
            load = gpu_load(seconds / 3)
        samples.append({"t": round(elapsed, 1), "rss_mib": ps.memory_info().rss / 2**20,
                        "uss_mib": ps.memory_full_info().uss / 2**20,
                        "cpu_s": sum(ps.cpu_times()[:2])})
        await asyncio.sleep(1)
    cpu1 = sum(ps.cpu_times()[:2])
    rss_by_mapping = _rss_by_mapping(agent.pid)
    tw1 = time.monotonic()
    metrics = healthz = ""
    with contextlib.suppress(OSError):
        metrics = await asyncio.to_thread(_fetch, "http://127.0.0.1:9402/metrics")
        healthz = await asyncio.to_thread(_fetch, "http://127.0.0.1:9402/healthz")
    (out / "metrics.txt").write_text(metrics)
    agent.send_signal(signal.SIGTERM)
    # waited for off the loop: the embedded broker runs on this loop and must keep answering
    try:
        rc = await asyncio.to_thread(agent.wait, 20)
    except subprocess.TimeoutExpired:
        agent.kill()
        rc = -9
    log.close()
    if load is not None:
        await asyncio.to_thread(load.wait, 60)
    await asyncio.sleep(0.5)
    listener.cancel()
    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
        await listener
    await broker.stop()
    by_kind: dict[str, int] = {}
    for topic, _, _ in received:
        by_kind[topic.rsplit("/", 1)[-1]] = by_kind.get(topic.rsplit("/", 1)[-1], 0) + 1
    states = [json.loads(p) for t, p, _ in received if t.endswith("/state")]
    if states:
        (out / "last_state.json").write_text(json.dumps(states[-1], indent=1))
    busiest = max(states, key=lambda s: max((g.get("utilization_gpu_pct") or 0)
                                             for g in s["gpus"]), default=None)
    return {
        "agent_rc": rc,
        "messages_by_kind": by_kind,
        "cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (tw1 - tw0), 3),
        "rss_mib_max": round(max(s["rss_mib"] for s in samples), 1),
        "rss_mib_last": round(samples[-1]["rss_mib"], 1),
        "uss_mib_last": round(samples[-1]["uss_mib"], 1),
        "rss_mib_by_mapping": rss_by_mapping,
        "healthz": healthz,
        "peak_utilization_state": None if busiest is None else [
            {"index": g["index"], "util": g["utilization_gpu_pct"], "power_w": g["power_draw_w"],
             "temp_c": g["temperature_c"], "processes": len(g["processes"]),
             "clock_event_reasons": g["clock_event_reasons"]} for g in busiest["gpus"]],
        "health_over_run": sorted({s["health"] for s in states}),
    }


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out", type=Path)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--sim", action="store_true", help="rehearse on the sim backend")
    args = p.parse_args()
    if args.sim:
        SIM.extend(["--gpu-backend", "sim"])
    args.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"python": sys.version.split()[0]}
    with contextlib.suppress(Exception):
        summary["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,pci.bus_id",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=False,
        ).stdout.strip()
    for name, step in (("once", lambda: run_once(args.out)),
                       ("in_process", in_process_timings),
                       ("run", lambda: asyncio.run(run_fleet(args.out, args.seconds)))):
        try:
            summary[name] = step()
        except Exception as exc:  # keep going: every step's evidence matters
            summary[name] = {"error": f"{type(exc).__name__}: {exc}"}
            say(f"{name} failed: {exc}")
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    say("done")
    print(json.dumps(summary, indent=1, default=str)[:6000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
