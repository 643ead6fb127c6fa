"""Check attribution and interval-averaged utilization on a real GPU (run from the repo root).

    python bench/real_gpu_usage_probe.py OUTDIR [--seconds 36] [--sim]

What the fake pynvml assumes and only a real driver can confirm (docs/real-gpu.md):

1. the sample buffers: ``nvmlDeviceGetSamples`` for GPU and memory utilization from
   timestamp 0 (the whole buffer): value type, sample count, period, span, time order;
2. a bursty load (PyTorch matmuls, 3 s busy then 3 s idle, in a child process) read every
   6 s by the real collector: the interval mean (``utilization_source`` "samples") beside the
   instant rates read at the same moment, which land on either phase of the burst;
3. the owners the collector publishes for the load's process (on a host without
   Kubernetes or Slurm: ``host``, or ``container`` in docker), its pids and memory, and
   ``nvmlDeviceGetProcessUtilization``'s raw entries: one per process or several, and their
   SM figure beside the interval mean.

Everything goes to OUTDIR/usage-summary.json; progress to stdout. ``--sim`` rehearses it on
the fake (no load process then: the fake's own wave stands in).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec

from agent.nvml_collector import GpuCollector
from agent.proc_owners import ProcDir
from agent.sim.fake_pynvml import FakeNvml

BURST = (
    "import time, torch\n"
    "a = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16)\n"
    "end = time.time() + {seconds}\n"
    "while time.time() < end:\n"
    "    busy = time.time() + 3\n"
    "    while time.time() < busy:\n"
    "        (a @ a).sum().item()\n"
    "    time.sleep(3)\n"
)


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def buffers(nvml: Any, handle: Any) -> dict[str, Any]:
    """What the driver keeps: the whole buffer of each utilization sample type."""
    found: dict[str, Any] = {}
    for name in ("NVML_GPU_UTILIZATION_SAMPLES", "NVML_MEMORY_UTILIZATION_SAMPLES"):
        try:
            value_type, samples = nvml.nvmlDeviceGetSamples(handle, getattr(nvml, name), 0)
        except Exception as exc:
            found[name] = f"{type(exc).__name__}: {exc}"
            continue
        stamps = [int(s.timeStamp) for s in samples]
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        found[name] = {
            "value_type": int(value_type),
            "count": len(samples),
            "span_s": (max(stamps) - min(stamps)) / 1e6 if stamps else None,
            "period_ms_median": statistics.median(gaps) / 1e3 if gaps else None,
            "in_time_order": stamps == sorted(stamps),
        }
    return found


def raw_process_utilization(nvml: Any, handle: Any) -> Any:
    try:
        entries = nvml.nvmlDeviceGetProcessUtilization(handle, 0)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return [
        {"pid": int(e.pid), "ts": int(e.timeStamp), "sm": int(e.smUtil), "mem": int(e.memUtil)}
        for e in entries
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("outdir", type=Path)
    p.add_argument("--seconds", type=float, default=36.0)
    p.add_argument("--sim", action="store_true", help="rehearse on the fake pynvml")
    args = p.parse_args()
    args.outdir.mkdir(parents=True, exist_ok=True)
    if args.sim:
        nvml: Any = FakeNvml(gpus=1)
        proc: Any = nvml.proc  # the simulated node's processes are only in its own /proc
    else:
        import pynvml  # noqa: PLC0415 - only the real run needs the driver's bindings

        nvml, proc = pynvml, ProcDir(Path("/proc"))
    collector = GpuCollector(nvml, proc=proc)
    collector.start()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    summary: dict[str, Any] = {"buffers_at_start": buffers(nvml, handle)}
    say(f"buffers: {json.dumps(summary['buffers_at_start'])}")

    load = None
    if not args.sim:
        code = BURST.format(seconds=args.seconds)
        load = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
        summary["load_pid"] = load.pid
    collector.collect()  # from here on, each read averages since the previous one
    reads = []
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        time.sleep(6)
        rates = nvml.nvmlDeviceGetUtilizationRates(handle)
        states, errors = collector.collect()
        gpu = states[0]
        read = {
            "source": gpu.utilization_source,
            "mean_gpu_pct": gpu.utilization_gpu_pct,
            "mean_memory_pct": gpu.utilization_memory_pct,
            "window_s": gpu.utilization_window_s,
            "instant_gpu_pct": int(rates.gpu),
            "owners": msgspec.to_builtins(gpu.owners),
            "errors": [f"{e.what}: {e.error}" for e in errors],
            "raw_process_utilization": raw_process_utilization(nvml, handle),
        }
        reads.append(read)
        say(
            f"mean {read['mean_gpu_pct']} ({read['source']}, {read['window_s']} s) vs instant "
            f"{read['instant_gpu_pct']}; owners {[(str(o.kind), o.pids) for o in gpu.owners]}"
        )
    summary["reads"] = reads
    summary["attribution"] = collector.attribution
    if load is not None:
        load.wait(30)
    collector.shutdown()
    (args.outdir / "usage-summary.json").write_text(json.dumps(summary, indent=2))
    say(f"wrote {args.outdir / 'usage-summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
