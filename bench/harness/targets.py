"""Targets: the systems under comparison.

A target is a `start(ctx) -> Running` function: it starts the processes the
system needs (one broker today; Redis + three AstraMQ nodes + the proxy
later), waits until they are ready, and returns the addresses publishers and
subscribers should use and the PIDs whose CPU time and memory are the
system's cost. `prepare(ctx)` installs or checks what it needs once per run.
Register new targets in TARGETS; peers (compared against) have peer=True.

MQTT 5.0 scenarios use the same `start` unless the target serves 5.0 on a
listener of its own (`start_v5`, rumqttd). A broker that answers a 5.0
CONNECT with 3.1.1's "unacceptable protocol version" (an older `--baseline`
binary) is reported as not serving the scenario, not as failing it.

Configurations are chosen to be comparable, not tuned: no persistence, no
logging beyond warnings, 32 QoS 1/2 messages in flight per client where the
broker lets us set it, and large per-client queues (MAX_QUEUED).
"""

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from . import procs

# Per-client queue bound (messages) for brokers that have one.
MAX_QUEUED = 100_000
# QoS 1/2 messages in flight per client.
MAX_INFLIGHT = 32


@dataclass
class Context:
    root: Path  # the workspace
    target_dir: Path  # cargo's target directory
    workdir: Path  # configs and logs of this run
    install: bool = True  # install missing peers (apt-get, cargo install)
    baseline: Optional[Path] = None  # an older astramq-node to compare with (--baseline)
    started: int = 0  # counter for unique log names

    def log(self, name):
        self.started += 1
        return self.workdir / f"{self.started:02d}-{name}.log"


@dataclass
class Running:
    pub_addrs: list
    sub_addrs: list
    pids: list
    procs: list = field(default_factory=list)

    def stop(self):
        for proc in reversed(self.procs):
            procs.stop(proc)


@dataclass
class Target:
    key: str
    name: str
    prepare: Callable
    start: Callable
    peer: bool
    # Starts the target for MQTT 5.0 scenarios when 5.0 has its own listener.
    start_v5: Optional[Callable] = None

    def starter(self, protocol):
        """The start function for a scenario's protocol ("3.1.1" or "5")."""
        if protocol == "5" and self.start_v5:
            return self.start_v5
        return self.start


class NotServed(Exception):
    """The target does not serve the scenario's protocol."""


# --- AstraMQ -----------------------------------------------------------------

LISTENING = "astramq-node listening on mqtt://"


def astramq_binary(ctx):
    return ctx.target_dir / "release" / "astramq-node"


def prepare_astramq(ctx):
    # Built by the entry point together with the bench (one cargo invocation).
    if not astramq_binary(ctx).exists():
        raise RuntimeError(f"{astramq_binary(ctx)} is missing (build failed?)")


def start_astramq_node(ctx, extra_args=(), name="astramq", binary=None):
    """One node on an ephemeral loopback port; returns (proc, 'host:port')."""
    argv = [
        str(binary or astramq_binary(ctx)),
        "--listen", "127.0.0.1:0",
        "--sys-interval", "0",
        "--max-inflight", str(MAX_INFLIGHT),
        "--max-queued-messages", str(MAX_QUEUED),
        *extra_args,
    ]
    # The bench connects without credentials. Set through the environment
    # rather than `--allow-anonymous true`, so a --baseline binary older
    # than the flag (which lets everyone in anyway) still starts.
    env = dict(
        os.environ,
        RUST_LOG=os.environ.get("ASTRAMQ_BENCH_LOG", "warn"),
        ASTRAMQ_ALLOW_ANONYMOUS="true",
    )
    log = ctx.log(name)
    proc = procs.spawn(argv, log, env=env, stdout=subprocess.PIPE)
    try:
        addr = procs.wait_for_line(proc, LISTENING, log)
    except Exception:
        procs.stop(proc)
        raise
    return proc, addr


def start_astramq(ctx):
    proc, addr = start_astramq_node(ctx)
    return Running([addr], [addr], [proc.pid], [proc])


def start_redis(ctx):
    """A private redis-server with AOF (appendfsync everysec), as production
    runs it; returns (proc, url)."""
    port = procs.free_port()
    data = ctx.workdir / f"redis-{port}"
    data.mkdir(parents=True, exist_ok=True)
    argv = [
        shutil.which("redis-server") or "redis-server",
        "--port", str(port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
        "--dir", str(data),
    ]
    proc = procs.spawn(argv, ctx.log("redis"))
    try:
        procs.wait_for_port(proc, port)
    except Exception:
        procs.stop(proc)
        raise
    return proc, f"redis://127.0.0.1:{port}"


def prepare_redis(ctx):
    prepare_astramq(ctx)
    if not shutil.which("redis-server"):
        raise RuntimeError("redis-server is not installed (scripts/test installs it)")


def start_astramq_cluster(ctx, nodes, mode, binary=None, extra=()):
    """Redis plus `nodes` AstraMQ nodes. With several nodes, publishers use
    node 1 and subscribers node 2: every delivery crosses nodes. The cost
    is every process's CPU, Redis included."""
    redis, url = start_redis(ctx)
    started = [redis]
    addrs = []
    try:
        for i in range(nodes):
            args = ["--redis", url, "--cluster-mode", mode, "--node-id", f"bench-{mode}-{i}", *extra]
            proc, addr = start_astramq_node(ctx, args, name=f"astramq-{mode}-{i}", binary=binary)
            started.append(proc)
            addrs.append(addr)
    except Exception:
        for proc in reversed(started):
            procs.stop(proc)
        raise
    sub = addrs[1] if nodes > 1 else addrs[0]
    return Running([addrs[0]], [sub], [p.pid for p in started], started)


def start_astramq_redis(ctx):
    return start_astramq_cluster(ctx, 1, "routed")


def start_astramq_routed(ctx):
    return start_astramq_cluster(ctx, 3, "routed")


# The forwarder waits 1 ms for more publishes before each Redis write.
LINGER = ("--forward-linger-ms", "1")


def start_astramq_redis_linger(ctx):
    return start_astramq_cluster(ctx, 1, "routed", extra=LINGER)


def start_astramq_routed_linger(ctx):
    return start_astramq_cluster(ctx, 3, "routed", extra=LINGER)


def start_astramq_broadcast(ctx):
    return start_astramq_cluster(ctx, 3, "broadcast")


# --- An older AstraMQ, for before/after comparisons in one run ----------------


def prepare_baseline_node(ctx):
    if ctx.baseline is None or not ctx.baseline.exists():
        raise RuntimeError("no --baseline binary given")


def prepare_baseline(ctx):
    prepare_redis(ctx)
    prepare_baseline_node(ctx)


def start_baseline_node(ctx):
    """The `astramq` target (one node, embedded store) run by the baseline."""
    proc, addr = start_astramq_node(ctx, name="baseline-node", binary=ctx.baseline)
    return Running([addr], [addr], [proc.pid], [proc])


def start_baseline_redis(ctx):
    return start_astramq_cluster(ctx, 1, "routed", binary=ctx.baseline)


def start_baseline_routed(ctx):
    return start_astramq_cluster(ctx, 3, "routed", binary=ctx.baseline)


def start_baseline_broadcast(ctx):
    return start_astramq_cluster(ctx, 3, "broadcast", binary=ctx.baseline)


# --- AstraMQ behind the proxy -------------------------------------------------

PROXY_LISTENING = "astramq-proxy listening on mqtt://"


def proxy_binary(ctx):
    return ctx.target_dir / "release" / "astramq-proxy"


def prepare_astramq_proxy(ctx):
    prepare_astramq(ctx)
    # The entry point builds the node and the bench; the proxy is built here
    # (release; a no-op when up to date) so the comparison needs no extra step.
    print("building astramq-proxy (release)...", flush=True)
    subprocess.run(["cargo", "build", "--release", "--quiet", "-p", "astramq-proxy"],
                   cwd=ctx.root, check=True, timeout=1800)
    if not proxy_binary(ctx).exists():
        raise RuntimeError(f"{proxy_binary(ctx)} is missing (build failed?)")


def start_astramq_proxy(ctx):
    """One node (as the `astramq` target) with astramq-proxy in front, given
    the node by --backends (no gossip); publishers and subscribers both
    connect through the proxy. The cost is both processes' CPU, so the
    difference from `astramq` on the same scenario is the proxy's cost."""
    node, node_addr = start_astramq_node(ctx, name="astramq-behind-proxy")
    argv = [
        str(proxy_binary(ctx)),
        "--listen", "127.0.0.1:0",
        "--backends", node_addr,
        # Every bench client connects from 127.0.0.1, and conn-idle opens
        # 10k connections at once: the production per-address cap (1000)
        # and rate (5000/s) would refuse them. The benchmark measures the
        # relay, not the admission limits.
        "--max-connections-per-ip", "1000000",
        "--max-connection-rate", "1000000",
    ]
    if os.environ.get("ASTRAMQ_BENCH_PROXY_THREADS"):
        argv += ["--threads", os.environ["ASTRAMQ_BENCH_PROXY_THREADS"]]
    env = dict(os.environ, RUST_LOG=os.environ.get("ASTRAMQ_BENCH_LOG", "warn"))
    log = ctx.log("astramq-proxy")
    proxy = procs.spawn(argv, log, env=env, stdout=subprocess.PIPE)
    try:
        addr = procs.wait_for_line(proxy, PROXY_LISTENING, log)
    except Exception:
        procs.stop(proxy)
        procs.stop(node)
        raise
    return Running([addr], [addr], [node.pid, proxy.pid], [node, proxy])


# --- Mosquitto ---------------------------------------------------------------

def mosquitto_binary():
    return shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)


def prepare_mosquitto(ctx):
    if mosquitto_binary():
        return
    if not ctx.install:
        raise RuntimeError("mosquitto is not installed (run without --no-install)")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    print("installing mosquitto (apt-get)...", flush=True)
    subprocess.run(sudo + ["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
    subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "mosquitto"], check=True, env=env, timeout=600)
    if not mosquitto_binary():
        raise RuntimeError("mosquitto still missing after apt-get install")


def start_mosquitto(ctx):
    port = procs.free_port()
    conf = ctx.workdir / f"mosquitto-{port}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        f"max_queued_messages {MAX_QUEUED}\n"
        f"max_inflight_messages {MAX_INFLIGHT}\n"
        "max_connections -1\n"
        "set_tcp_nodelay true\n"
        "log_dest none\n"
    )
    conf.chmod(0o644)  # mosquitto drops to its own user when started as root
    proc = procs.spawn([mosquitto_binary(), "-c", str(conf)], ctx.log("mosquitto"))
    try:
        procs.wait_for_port(proc, port)
    except Exception:
        procs.stop(proc)
        raise
    addr = f"127.0.0.1:{port}"
    return Running([addr], [addr], [proc.pid], [proc])


# --- rumqttd -----------------------------------------------------------------

def rumqttd_binary():
    cargo_bin = Path.home() / ".cargo" / "bin" / "rumqttd"
    return str(cargo_bin) if cargo_bin.exists() else shutil.which("rumqttd")


def prepare_rumqttd(ctx):
    if rumqttd_binary():
        return
    if not ctx.install:
        raise RuntimeError("rumqttd is not installed (run without --no-install)")
    # Without --locked: its lock file does not build on current compilers.
    print("installing rumqttd (cargo install, takes minutes)...", flush=True)
    subprocess.run(["cargo", "install", "rumqttd"], check=True, timeout=1800)


def start_rumqttd(ctx, version="v4"):
    """rumqttd with one listener on loopback: `v4` (MQTT 3.1.1) or `v5`."""
    port = procs.free_port()
    conf = ctx.workdir / f"rumqttd-{port}.toml"
    # One listener, on loopback, in the scenario's protocol: the stock config
    # opens v4, v5, websocket, console and prometheus ports on 0.0.0.0. The
    # v5 listener takes the same settings as the v4 one.
    # rumqttd's outgoing in-flight window is fixed at 100 (router/iobufs.rs);
    # max_inflight_count is its per-connection incoming batch size.
    conf.write_text(
        "id = 0\n\n"
        "[router]\n"
        "id = 0\n"
        "max_connections = 20010\n"
        "max_outgoing_packet_count = 200\n"
        "max_segment_size = 104857600\n"
        "max_segment_count = 10\n\n"
        f"[{version}.1]\n"
        f'name = "{version}-1"\n'
        f'listen = "127.0.0.1:{port}"\n'
        "next_connection_delay_ms = 0\n"
        f"[{version}.1.connections]\n"
        "connection_timeout_ms = 60000\n"
        "max_payload_size = 1048576\n"
        "max_inflight_count = 100\n"
        "dynamic_filters = true\n"
    )
    proc = procs.spawn([rumqttd_binary(), "-q", "-c", str(conf)], ctx.log("rumqttd"))
    try:
        procs.wait_for_port(proc, port)
    except Exception:
        procs.stop(proc)
        raise
    addr = f"127.0.0.1:{port}"
    return Running([addr], [addr], [proc.pid], [proc])


def start_rumqttd_v5(ctx):
    return start_rumqttd(ctx, "v5")


TARGETS = {
    t.key: t
    for t in [
        Target("astramq", "AstraMQ", prepare_astramq, start_astramq, peer=False),
        Target("astramq-redis", "AstraMQ 1 node on Redis", prepare_redis, start_astramq_redis, peer=False),
        Target("astramq-routed", "AstraMQ 3 nodes routed, cross-node", prepare_redis, start_astramq_routed, peer=False),
        Target("astramq-redis-linger", "AstraMQ 1 node on Redis, linger 1 ms", prepare_redis, start_astramq_redis_linger, peer=False),
        Target("astramq-routed-linger", "AstraMQ 3 nodes routed, linger 1 ms", prepare_redis, start_astramq_routed_linger, peer=False),
        Target("astramq-broadcast", "AstraMQ 3 nodes broadcast, cross-node", prepare_redis, start_astramq_broadcast, peer=False),
        Target("astramq-proxy", "AstraMQ behind astramq-proxy", prepare_astramq_proxy, start_astramq_proxy, peer=False),
        Target("baseline-node", "baseline: AstraMQ 1 node", prepare_baseline_node, start_baseline_node, peer=False),
        Target("baseline-redis", "baseline: 1 node on Redis", prepare_baseline, start_baseline_redis, peer=False),
        Target("baseline-routed", "baseline: 3 nodes routed", prepare_baseline, start_baseline_routed, peer=False),
        Target("baseline-broadcast", "baseline: 3 nodes broadcast", prepare_baseline, start_baseline_broadcast, peer=False),
        Target("mosquitto", "Mosquitto", prepare_mosquitto, start_mosquitto, peer=True),
        Target("rumqttd", "rumqttd", prepare_rumqttd, start_rumqttd, peer=True, start_v5=start_rumqttd_v5),
    ]
}
