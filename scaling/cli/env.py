"""`scaling env`: what this process runs on: backend, devices and their kind, the hardware
profile MFU will use, the attention implementations available, and package versions."""

from __future__ import annotations

from importlib import metadata
from typing import Annotated, Any

import typer
from rich.table import Table

from scaling.cli.common import out_console, print_json, user_errors

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "scaling")
PLUGINS = ("jax-cuda12-plugin", "jax-cuda12-pjrt", "libtpu")


def environment() -> dict[str, Any]:
    """Backend, devices, matched profile and versions of this process (starts jax)."""
    import platform

    import jax

    from scaling.attention import available
    from scaling.estimate.hardware import cached_cpu_peak, match_device_kind
    from scaling.hostmem import host_allocator
    from scaling.preflight import device_memory_bytes

    devices = jax.devices()
    first = devices[0]
    profile = match_device_kind(first.device_kind)
    if profile is not None:
        name, source = profile.name, f"{profile.name}: {profile.source}"
    elif first.platform == "cpu":
        cached = cached_cpu_peak()
        name = "cpu"
        source = "matmul probe of this host, measured in each run" + (
            f" (last cached: {cached / 1e9:.1f} GFLOP/s f32)" if cached else ""
        )
    else:
        name = None
        source = "no profile for this kind: a bf16 matmul probe per run, or give --peak-tflops"
    return {
        "backend": jax.default_backend(),
        "platform": first.platform,
        "device_count": len(devices),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "device_kind": first.device_kind,
        "device_memory_bytes": device_memory_bytes(first),
        "hardware_profile": name,
        "peak_source": source,
        "peak_bf16_flops": profile.peak_flops("bfloat16") if profile else None,
        "attention": list(available(first.platform)),
        "host_allocator": host_allocator(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in (*PACKAGES, *PLUGINS)},
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def env(
    json_: Annotated[bool, typer.Option("--json", help="Last stdout line: a JSON object.")] = False,
) -> None:
    """Backend, devices, device kind, matched hardware profile and versions."""
    with user_errors():
        info = environment()
    if json_:
        print_json(info)
        return
    table = Table(title="scaling env", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    for key in ("backend", "device_count", "process_count", "device_kind", "hardware_profile",
                "peak_source"):  # fmt: skip
        table.add_row(key.replace("_", " "), str(info[key]))
    memory = info["device_memory_bytes"]
    table.add_row("device memory", f"{memory / 2**30:.1f} GiB" if memory else "unknown")
    table.add_row("attention", ", ".join(info["attention"]))
    table.add_row("host malloc", info["host_allocator"])
    table.add_row("python", info["python"])
    for name, version in info["versions"].items():
        if version is not None or name in PACKAGES:
            table.add_row(name, version or "not installed")
    out_console.print(table)
