"""Cold image pull over CRI: cryopod against containerd, same image, same client, same host.

The image (about 150 MiB in 7 gzip layers by default) is built locally and pushed to a
`docker-registry` started for the run. Each runtime then pulls it over CRI `PullImage` into a
fresh root, `--runs` times; a run's figure is the wall time from the call to the response,
which for both runtimes covers download, verification and unpacking into overlay layers.
MiB/s is the compressed image size (layers + config, as the manifest states) over that time.

Run from the repo root as root:  .venv/bin/python bench/pull.py [--runs 3] [--json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.crihelp import (
    BenchError,
    Containerd,
    CryopodDaemon,
    Runtime,
    add_common_arguments,
    bench_workdir,
    check_common_arguments,
    chosen_runtimes,
    claim_session,
    install_signal_handlers,
    log,
    remove_tree,
)
from tests.support.imagebuild import LayoutBuilder, big_image
from tests.support.registry import Registry, fetch_manifest, push

MIB = 1 << 20
LAYOUT_REF = "bench"
REPO_NAME = "bench/big"


@dataclass(frozen=True)
class BenchImage:
    """The image under test as the registry serves it."""

    reference: str
    host: str
    digest: str
    config_digest: str
    layer_sizes: tuple[int, ...]
    config_size: int

    @property
    def compressed_bytes(self) -> int:
        return sum(self.layer_sizes) + self.config_size

    @property
    def compressed_mib(self) -> float:
        return self.compressed_bytes / MIB


@dataclass
class RuntimeResult:
    """All runs of one runtime."""

    runtime: str
    version: str = ""
    seconds: list[float] = field(default_factory=list)
    compressed_bytes: int = 0

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def mib_per_s(self, seconds: float) -> float:
        return self.compressed_bytes / MIB / seconds

    def as_json(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "version": self.version,
            "runs_s": [round(s, 4) for s in self.seconds],
            "best_s": round(self.best, 4),
            "median_s": round(self.median, 4),
            "mib_per_s_best": round(self.mib_per_s(self.best), 2),
            "mib_per_s_median": round(self.mib_per_s(self.median), 2),
        }


# ----------------------------------------------------------------------------- image


def build_and_push(workdir: Path, registry: Registry, size_mb: int, layers: int) -> BenchImage:
    layout_dir = workdir / "layout"
    started = time.perf_counter()
    big_image(LayoutBuilder(layout_dir), LAYOUT_REF, layers=layers, total_mb=size_mb)
    log(f"built {layers}-layer image of ~{size_mb} MiB in {time.perf_counter() - started:.1f}s")
    started = time.perf_counter()
    digest = push(layout_dir, LAYOUT_REF, registry, f"{REPO_NAME}:latest")
    log(f"pushed {digest} in {time.perf_counter() - started:.1f}s")
    manifest = fetch_manifest(registry.host, REPO_NAME, digest).json()
    config = manifest["config"]
    layer_list = manifest["layers"]
    assert isinstance(config, dict) and isinstance(layer_list, list)
    # The layout's copy is not needed any more; the registry holds the image.
    shutil.rmtree(layout_dir, ignore_errors=True)
    return BenchImage(
        reference=f"{registry.host}/{REPO_NAME}:latest",
        host=registry.host,
        digest=digest,
        config_digest=str(config["digest"]),
        layer_sizes=tuple(int(layer["size"]) for layer in layer_list),
        config_size=int(config["size"]),
    )


# ----------------------------------------------------------------------------- profiling


@contextmanager
def py_spy(pid: int | None, output: Path | None, rate: int) -> Iterator[None]:
    """Sample `pid` with `py-spy record` (raw folded stacks) for the duration of the block."""
    if pid is None or output is None:
        yield
        return
    binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    argv = [binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
    argv += ["--output", str(output), "--nonblocking"]
    with open(output.with_suffix(".log"), "wb") as spy_log:
        spy = subprocess.Popen(argv, stdout=spy_log, stderr=subprocess.STDOUT)
    try:
        time.sleep(1.0)  # py-spy needs a moment to attach before the pull starts
        if spy.poll() is not None:
            raise BenchError(f"py-spy exited {spy.returncode}; see {output.with_suffix('.log')}")
        yield
    finally:
        if spy.poll() is None:
            spy.send_signal(signal.SIGINT)
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait()


def _frame_name(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file.py)`: lines apart, a function is one row."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rpartition(":")[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{name} ({short})"


def summarize_profile(paths: list[Path], top: int) -> dict[str, Any]:
    """Top functions by own samples and by samples with the function anywhere on the stack."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    threads: collections.Counter[str] = collections.Counter()
    total = 0
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            # With --threads py-spy puts "thread (0x...)" first; without it, frames only.
            if frames and frames[0].startswith(("thread (", "process ")):
                threads[frames[0]] += count
                frames = frames[1:]
            if not frames:
                continue
            total += count
            own[_frame_name(frames[-1])] += count
            for name in {_frame_name(f) for f in frames}:
                inclusive[name] += count

    def rows(counter: collections.Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "samples": n, "percent": round(100 * n / total, 1)}
            for name, n in counter.most_common(top)
        ]

    return {"samples": total, "own": rows(own), "inclusive": rows(inclusive)}


def print_profile(summary: dict[str, Any]) -> None:
    log(f"\ncryopod daemon profile: {summary['samples']} samples of busy threads")
    for kind in ("own", "inclusive"):
        log(f"  top functions ({kind} time):")
        for row in summary[kind]:
            log(f"    {row['percent']:5.1f}%  {row['function']}")


# ----------------------------------------------------------------------------- runs


def make_runtime(name: str, base: Path, image: BenchImage, args: argparse.Namespace) -> Runtime:
    if name == "cryopod":
        return CryopodDaemon(base, insecure_registries=[image.host], log_level=args.log_level)
    return Containerd(
        base,
        insecure_registries=[image.host],
        registry_mode=args.containerd_registry_mode,
        log_level=args.log_level,
    )


def pull_once(
    name: str, run: int, workdir: Path, image: BenchImage, args: argparse.Namespace
) -> tuple[float, str]:
    """One cold pull into a fresh root; answers (seconds, runtime version)."""
    base = workdir / f"{name}-{run}"
    runtime = make_runtime(name, base, image, args)
    profile_out = None
    if args.profile is not None and name == "cryopod":
        profile_out = args.profile / f"cryopod-run{run}.txt"
    try:
        client = runtime.start()  # its errors carry the log already
    except BaseException:
        runtime.cleanup()
        remove_tree(base)
        raise
    try:
        version = client.version()
        version_text = f"{version.runtime_name} {version.runtime_version}"
        with py_spy(runtime.pid, profile_out, args.profile_rate):
            started = time.perf_counter()
            image_ref = client.pull(image.reference, timeout=args.timeout)
            elapsed = time.perf_counter() - started
        status = client.image_status(image.reference)
        if status is None:
            raise BenchError(f"{name}: ImageStatus does not know {image.reference} after pull")
        if image.config_digest not in (status.id, image_ref):
            raise BenchError(
                f"{name}: pulled image id {status.id} (ref {image_ref}), "
                f"expected {image.config_digest}"
            )
        layers = runtime.layer_count()
        if layers != len(image.layer_sizes):
            raise BenchError(
                f"{name}: {layers} unpacked layers on disk after the pull, "
                f"expected {len(image.layer_sizes)}"
            )
        log(
            f"  {name} run {run}: {elapsed:.3f}s "
            f"({image.compressed_mib / elapsed:.1f} MiB/s, {layers} layers unpacked)"
        )
        return elapsed, version_text
    except Exception:
        log(f"--- {runtime.log_path} (tail):\n{runtime.log_tail()}")
        raise
    finally:
        for note in runtime.cleanup():
            log(f"  {name} cleanup: {note}")
        if isinstance(runtime, Containerd) and runtime.shims():
            raise BenchError(f"containerd shims still running: {runtime.shims()}")
        if not args.keep:
            remove_tree(base)


# ----------------------------------------------------------------------------- report


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def print_table(image: BenchImage, results: dict[str, RuntimeResult], runs: int) -> None:
    print(
        f"image: {image.reference}  {len(image.layer_sizes)} layers, "
        f"{image.compressed_mib:.1f} MiB compressed (layers + config); "
        f"cold pull into a fresh root, {runs} runs each"
    )
    header = f"{'runtime':<12} {'best s':>8} {'median s':>9} {'MiB/s best':>11} {'MiB/s med':>10}"
    print(header)
    print("-" * len(header))
    for result in results.values():
        print(
            f"{result.runtime:<12} {result.best:>8.3f} {result.median:>9.3f} "
            f"{result.mib_per_s(result.best):>11.1f} {result.mib_per_s(result.median):>10.1f}"
        )
    if "cryopod" in results and "containerd" in results:
        ours, theirs = results["cryopod"], results["containerd"]
        print(
            "cryopod / containerd MiB/s: "
            f"{ratio(ours.mib_per_s(ours.best), theirs.mib_per_s(theirs.best)):.2f}x (best), "
            f"{ratio(ours.mib_per_s(ours.median), theirs.mib_per_s(theirs.median)):.2f}x "
            "(median)"
        )


def report_json(
    image: BenchImage,
    results: dict[str, RuntimeResult],
    args: argparse.Namespace,
    profile: dict[str, Any] | None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "benchmark": "pull",
        "image": {
            **asdict(image),
            "layers": len(image.layer_sizes),
            "compressed_bytes": image.compressed_bytes,
            "compressed_mib": round(image.compressed_mib, 2),
        },
        "runs": args.runs,
        "host": {"cpus": os.cpu_count(), "kernel": platform.release()},
        "results": {name: r.as_json() for name, r in results.items()},
    }
    if "cryopod" in results and "containerd" in results:
        ours, theirs = results["cryopod"], results["containerd"]
        out["ratio_mib_per_s_best"] = round(
            ratio(ours.mib_per_s(ours.best), theirs.mib_per_s(theirs.best)), 3
        )
        out["ratio_mib_per_s_median"] = round(
            ratio(ours.mib_per_s(ours.median), theirs.mib_per_s(theirs.median)), 3
        )
    if profile is not None:
        out["cryopod_profile"] = profile
    return out


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=150, help="image size in MiB (~)")
    parser.add_argument("--layers", type=int, default=7, help="number of layers")
    parser.add_argument("--runs", type=int, default=3, help="cold pulls per runtime")
    parser.add_argument(
        "--containerd-registry-mode",
        choices=("hosts", "mirrors"),
        default="hosts",
        help="declare the plain-http registry via hosts.toml (default) or registry.mirrors",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the cryopod daemon with py-spy during its pulls; raw stacks go to DIR "
        "(slows cryopod down: use for where-does-time-go, not for the figures)",
    )
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples/s")
    parser.add_argument("--profile-top", type=int, default=25, help="functions to show")
    parser.add_argument("--timeout", type=float, default=600.0, help="PullImage deadline (s)")
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    check_common_arguments(parser, args)
    if args.runs < 1 or args.layers < 1 or args.size_mb < 1:
        parser.error("--runs, --layers and --size-mb must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        log("warning: not root; containerd's overlayfs snapshotter needs root")
    install_signal_handlers()
    claim_session()
    names = chosen_runtimes(no_cryopod=args.no_cryopod, no_containerd=args.no_containerd)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)

    with bench_workdir("pullbench-", args.workdir, keep=args.keep) as workdir:
        return run_benchmark(args, names, workdir)


def run_benchmark(args: argparse.Namespace, names: list[str], workdir: Path) -> int:
    registry = Registry(workdir / "registry")
    try:
        registry.start()
        log(f"registry at {registry.url}, workdir {workdir}")
        image = build_and_push(workdir, registry, args.size_mb, args.layers)
        results = {
            n: RuntimeResult(runtime=n, compressed_bytes=image.compressed_bytes) for n in names
        }
        # Interleaved, so that drift in the host's load touches both runtimes alike.
        for run in range(1, args.runs + 1):
            for name in names:
                seconds, version = pull_once(name, run, workdir, image, args)
                results[name].seconds.append(seconds)
                results[name].version = version
        profile = None
        if args.profile is not None and "cryopod" in names:
            paths = sorted(args.profile.glob("cryopod-run*.txt"))
            profile = summarize_profile(paths, args.profile_top)
            print_profile(profile)
        if args.json:
            print(json.dumps(report_json(image, results, args, profile), indent=2))
        else:
            print_table(image, results, args.runs)
        return 0
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        registry.stop()


if __name__ == "__main__":
    sys.exit(main())
