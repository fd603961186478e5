"""Scenarios: the same astramq-bench invocations run against every target.

All use 64-byte payloads and MQTT 3.1.1 except the `p2p-v5-*` ones, which
repeat a 3.1.1 scenario's shape in MQTT 5.0 (`--protocol 5`). Fixed-rate scenarios measure cost (broker CPU-µs per
delivered message) and latency at a load every broker sustains; flat-out
scenarios measure throughput; `conn` measures idle-connection memory.
`--quick` keeps the shapes but uses fewer clients and 1 s windows, for a smoke
test (its figures are not comparable with a full run's).
"""

from dataclasses import dataclass

PAYLOAD = 64


@dataclass
class Scenario:
    key: str
    title: str
    mode: str  # astramq-bench subcommand: "load" or "conn"
    kind: str  # "fixed-rate", "flat-out", "overload" or "conn"
    args: list
    warmup: float = 0.0
    duration: float = 0.0
    protocol: str = "3.1.1"  # or "5"

    def bench_args(self):
        version = ["--protocol", self.protocol] if self.protocol != "3.1.1" else []
        if self.mode == "conn":
            return [*self.args, *version]
        return [
            *self.args,
            *version,
            "--payload", str(PAYLOAD),
            "--warmup", str(self.warmup),
            "--duration", str(self.duration),
        ]

    def time_limit(self):
        """Seconds the bench may take before it is killed."""
        return self.warmup + self.duration + 120


def scenarios(quick=False):
    warmup, duration = (0.5, 1.0) if quick else (2.0, 10.0)
    p2p = 4 if quick else 10
    fan = 20 if quick else 100
    conns = 1000 if quick else 10_000
    # p2p: publisher i -> topic i -> subscriber i.
    p2p_shape = ["-p", str(p2p), "-s", str(p2p), "-t", str(p2p)]
    per_pub_20k = str(20_000 // p2p)
    fan_in = ["-p", str(fan), "-s", "0", "--wildcard-subscribers", "1", "-t", str(fan), "-q", "1", "--inflight", "32"]
    load = dict(mode="load", warmup=warmup, duration=duration)
    return [
        Scenario(
            "p2p-qos0-20k", f"p2p {p2p}→{p2p} QoS 0, 20k msg/s total", kind="fixed-rate",
            args=[*p2p_shape, "-q", "0", "-r", per_pub_20k], **load,
        ),
        Scenario(
            "p2p-qos1-max", f"p2p {p2p}→{p2p} QoS 1, flat out (32 in flight)", kind="flat-out",
            args=[*p2p_shape, "-q", "1", "--inflight", "32"], **load,
        ),
        Scenario(
            "fanout-qos0", f"fan-out 1→{fan} QoS 0, 500 msg/s in ({fan * 500 // 1000}k/s out)",
            kind="fixed-rate",
            args=["-p", "1", "-s", str(fan), "-t", "1", "-q", "0", "-r", "500"], **load,
        ),
        # Brokers PUBACK on receipt, so flat-out publishers outrun a single
        # subscriber and an open-loop run measures overload (queues, drops,
        # seconds of latency). The closed loop caps outstanding deliveries at
        # 1,000 so the figure is the single subscriber's delivery rate; the
        # open-loop run is kept to show behaviour under overload.
        Scenario(
            "fanin-qos1-wildcard", f"fan-in {fan}→1 wildcard QoS 1, flat out, closed loop (≤ 1,000 outstanding)",
            kind="flat-out",
            args=[*fan_in, "--max-outstanding", "1000"], **load,
        ),
        Scenario(
            "fanin-qos1-overload", f"fan-in {fan}→1 wildcard QoS 1, flat out, open loop (overload)",
            kind="overload", args=fan_in, **load,
        ),
        # The same fixed rate with persistent subscribers: in a cluster every
        # delivery is queued in Redis before the publisher's PUBACK.
        Scenario(
            "p2p-qos1-persistent-20k", f"p2p {p2p}→{p2p} QoS 1, 20k msg/s total, persistent subscribers",
            kind="fixed-rate",
            args=[*p2p_shape, "-q", "1", "-r", per_pub_20k, "--persistent-subscribers"], **load,
        ),
        Scenario(
            "latency-qos1-20k", f"p2p {p2p}→{p2p} QoS 1, 20k msg/s total (latency)", kind="fixed-rate",
            args=[*p2p_shape, "-q", "1", "-r", per_pub_20k], **load,
        ),
        # MQTT 5.0: the shapes of p2p-qos1-max and p2p-qos0-20k, each message
        # with an (empty) property block, acknowledgements as 5.0 allows.
        Scenario(
            "p2p-v5-qos1", f"MQTT 5.0 p2p {p2p}→{p2p} QoS 1, flat out (32 in flight)", kind="flat-out",
            args=[*p2p_shape, "-q", "1", "--inflight", "32"], protocol="5", **load,
        ),
        Scenario(
            "p2p-v5-qos0-20k", f"MQTT 5.0 p2p {p2p}→{p2p} QoS 0, 20k msg/s total", kind="fixed-rate",
            args=[*p2p_shape, "-q", "0", "-r", per_pub_20k], protocol="5", **load,
        ),
        Scenario(
            "conn-idle", f"{conns // 1000}k idle connections", mode="conn", kind="conn",
            args=["-c", str(conns), "--concurrency", "64", "--source-ips", "50", "--settle", "1" if quick else "2"],
        ),
    ]
