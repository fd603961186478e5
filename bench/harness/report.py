"""Turns the bench's JSON reports into the comparison: the targets table
(AstraMQ against the best peer per figure), the per-scenario figures, and
the JSON document with everything.

`results[scenario_key][target_key]` is {"report": <astramq-bench JSON>},
{"error": "<why there is no report>"} or {"not_served": "<why>"} (the
target does not speak the scenario's protocol).
"""

# (figure, which scenarios, path into a report, lower is better, goal)
# A goal is (kind, number): "ratio" compares with the best peer,
# "max" is an absolute ceiling; None means reported, not judged.
# CPU per message is not judged under overload (most sends are dropped there).
FIGURES = [
    ("Broker CPU-µs per delivered msg", lambda s: s.kind in ("fixed-rate", "flat-out"),
     ("broker_cpu_us_per_msg",), True, ("ratio", 0.6)),
    ("Delivered msg/s, flat out", lambda s: s.kind == "flat-out", ("delivered_per_s",), False, ("ratio", 1.2)),
    ("p99 latency µs at 20k msg/s", lambda s: s.key in ("p2p-qos0-20k", "latency-qos1-20k", "p2p-v5-qos0-20k"),
     ("latency", "p99_us"), True, ("ratio", 1.0)),
    ("Idle RSS per connection, bytes", lambda s: s.kind == "conn", ("rss_per_connection_bytes",), True,
     ("max", 1024)),
    ("Connects/s", lambda s: s.kind == "conn", ("connects_per_s",), False, None),
]


# The goals are for one node; the cluster's CPU goal is 1.0x the
# best peer's single-node figure (nodes and Redis together). Other
# configurations (one node on Redis, behind the proxy) are reported, not
# judged here: the proxy's goals are relative to direct connections.
CLUSTER_TARGETS = ("astramq-routed", "astramq-broadcast")


# Each baseline target and the current configuration it is the "before" of.
BASELINES = {
    "baseline-node": "astramq",
    "baseline-redis": "astramq-redis",
    "baseline-routed": "astramq-routed",
    "baseline-broadcast": "astramq-broadcast",
}


def goal_for(target_key, figure, goal):
    if target_key == "astramq":
        return goal
    if target_key in CLUSTER_TARGETS and figure == FIGURES[0][0]:
        return ("ratio", 1.0)
    return None


def pick(report, path):
    value = report
    for key in path:
        if not isinstance(value, dict) or value.get(key) is None:
            return None
        value = value[key]
    return value


def fmt(value, unit=""):
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    magnitude = abs(value)
    if magnitude >= 100:
        text = f"{value:,.0f}"
    elif magnitude >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return text + unit


def summary(scenarios, results, targets):
    """One row per (figure, scenario): AstraMQ, the best peer, the ratio, the goal."""
    rows = []
    ours = [t for t in targets if not t.peer]
    peers = [t for t in targets if t.peer]
    for figure, selector, path, lower, goal in FIGURES:
        for scenario in scenarios:
            if not selector(scenario):
                continue
            by_target = results.get(scenario.key, {})

            def value(t):
                return pick(by_target.get(t.key, {}).get("report"), path)

            for us in ours:
                if "not_served" in by_target.get(us.key, {}):
                    continue
                goal_here = goal_for(us.key, figure, goal)
                mine = value(us)
                candidates = [(value(p), p) for p in peers if value(p) is not None]
                best = None
                if candidates:
                    best = (min if lower else max)(candidates, key=lambda c: c[0])
                ratio = None
                if mine is not None and best is not None and best[0] > 0:
                    ratio = mine / best[0]
                met = None
                if goal_here and goal_here[0] == "ratio" and ratio is not None:
                    met = ratio <= goal_here[1] if lower else ratio >= goal_here[1]
                elif goal_here and goal_here[0] == "max" and mine is not None:
                    met = mine <= goal_here[1]
                rows.append({
                    "figure": figure,
                    "scenario": scenario.key,
                    "target": us.key,
                    "value": mine,
                    "best_peer": best[1].key if best else None,
                    "best_peer_value": best[0] if best else None,
                    "ratio": ratio,
                    "lower_is_better": lower,
                    "goal": goal_text(goal_here, lower),
                    "met": met,
                })
    return rows


def before_after(scenarios, results, targets):
    """One row per (scenario, figure, configuration run both before and after):
    the baseline binary's figure, the current one's and after / before."""
    keys = {t.key for t in targets}
    pairs = [(before, after) for before, after in BASELINES.items() if before in keys and after in keys]
    rows = []
    for scenario in scenarios:
        by_target = results.get(scenario.key, {})
        figures = []
        if scenario.kind in ("fixed-rate", "flat-out"):
            figures.append(FIGURES[0])
        if scenario.kind == "flat-out":
            figures.append(FIGURES[1])
        for figure, _, path, lower, _ in figures:
            for before_key, after_key in pairs:
                if any("not_served" in by_target.get(k, {}) for k in (before_key, after_key)):
                    continue
                before = pick(by_target.get(before_key, {}).get("report"), path)
                after = pick(by_target.get(after_key, {}).get("report"), path)
                if before is None and after is None:
                    continue
                rows.append({
                    "scenario": scenario.key,
                    "figure": figure,
                    "target": after_key,
                    "before": before,
                    "after": after,
                    "ratio": after / before if before and after is not None else None,
                    "lower_is_better": lower,
                })
    return rows


def goal_text(goal, lower):
    if goal is None:
        return "–"
    kind, number = goal
    if kind == "ratio":
        return f"{'≤' if lower else '≥'} {number}×"
    return f"≤ {number:,}"


def markdown(meta, scenarios, results, targets, rows):
    names = {t.key: t.name for t in targets}
    out = [f"# AstraMQ against {', '.join(t.name for t in targets if t.peer) or 'no peers'}", ""]
    out.append(
        f"{meta['when']} · `{meta['command']}` · commit {meta['commit']} · "
        f"{meta['cpus']} cores shared with other work (load average at start {meta['loadavg']}) · "
        f"{meta['elapsed_s']:.0f} s."
    )
    out.append("")
    out.append(
        f"Every broker is started fresh for every scenario. Load scenarios: {meta['warmup_s']} s warm-up, "
        f"then a {meta['window_s']} s window; 64-byte payloads; one `astramq-bench` process "
        f"({meta['bench_threads']} runtime thread) on the same machine. Broker CPU and RSS come from "
        "/proc (all threads). CPU-µs per delivered message is the figure least affected by other load."
    )
    out += ["", "## Targets", ""]
    out.append("| figure | scenario | AstraMQ configuration | AstraMQ | best peer | AstraMQ / best | goal | met |")
    out.append("|---|---|---|---:|---|---:|---|---|")
    for r in rows:
        best = f"{fmt(r['best_peer_value'])} ({names.get(r['best_peer'], '–')})" if r["best_peer"] else "–"
        ratio = f"{r['ratio']:.2f}×" if r["ratio"] is not None else "–"
        met = {True: "yes", False: "**no**", None: "–"}[r["met"]]
        config = names.get(r["target"], r["target"])
        out.append(
            f"| {r['figure']} | {r['scenario']} | {config} | {fmt(r['value'])} | {best} | {ratio} | {r['goal']} | {met} |"
        )

    changes = before_after(scenarios, results, targets)
    if changes:
        out += ["", "## Before / after (the --baseline binary against the current one)", ""]
        out.append("| scenario | figure | configuration | before | after | after / before |")
        out.append("|---|---|---|---:|---:|---:|")
        for r in changes:
            ratio = f"{r['ratio']:.2f}×" if r["ratio"] is not None else "–"
            out.append(
                f"| {r['scenario']} | {r['figure']} | {names.get(r['target'], r['target'])} | "
                f"{fmt(r['before'])} | {fmt(r['after'])} | {ratio} |"
            )

    out += ["", "## Load scenarios", ""]
    out.append(
        "| scenario | broker | delivered msg/s | sent msg/s | delivered / expected | p50 µs | p99 µs | "
        "p99.9 µs | broker CPU-µs/msg | broker CPU % | broker RSS MiB | bench CPU % |"
    )
    out.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in scenarios:
        if s.mode != "load":
            continue
        for t in targets:
            entry = results.get(s.key, {}).get(t.key, {})
            r = entry.get("report")
            if r is None and "not_served" in entry:
                out.append(f"| {s.key} | {t.name} | not served: {short(entry['not_served'])} |" + " |" * 9)
                continue
            if r is None:
                out.append(f"| {s.key} | {t.name} | error: {short(entry.get('error'))} |" + " |" * 9)
                continue
            rss = pick(r, ("broker", "rss_after_kib"))
            out.append(
                f"| {s.key} | {t.name} | {fmt(r['delivered_per_s'])} | {fmt(r['sent_per_s'])} | "
                f"{fmt(r.get('delivery_ratio'))} | {fmt(pick(r, ('latency', 'p50_us')))} | "
                f"{fmt(pick(r, ('latency', 'p99_us')))} | {fmt(pick(r, ('latency', 'p999_us')))} | "
                f"{fmt(r.get('broker_cpu_us_per_msg'))} | {fmt(pick(r, ('broker', 'cpu_percent')))} | "
                f"{fmt(rss / 1024 if rss is not None else None)} | {fmt(r['bench_cpu_percent'])} |"
            )

    out += ["", "## Connection scenarios", ""]
    out.append(
        "| scenario | broker | connected | failed | connects/s | connect p99 µs | RSS before → after MiB | "
        "RSS per connection B | broker CPU-µs/connection |"
    )
    out.append("|---|---|---:|---:|---:|---:|---|---:|---:|")
    for s in scenarios:
        if s.mode != "conn":
            continue
        for t in targets:
            entry = results.get(s.key, {}).get(t.key, {})
            r = entry.get("report")
            if r is None:
                out.append(f"| {s.key} | {t.name} | error: {short(entry.get('error'))} |" + " |" * 6)
                continue
            before = pick(r, ("broker", "rss_before_kib"))
            after = pick(r, ("broker", "rss_after_kib"))
            rss = f"{fmt(before / 1024)} → {fmt(after / 1024)}" if before is not None else "–"
            out.append(
                f"| {s.key} | {t.name} | {r['connected']} | {r['failed']} | {fmt(r['connects_per_s'])} | "
                f"{fmt(pick(r, ('connect_latency', 'p99_us')))} | {rss} | "
                f"{fmt(r.get('rss_per_connection_bytes'))} | {fmt(r.get('broker_cpu_us_per_connection'))} |"
            )

    out += ["", "## Scenarios", ""]
    for s in scenarios:
        out.append(f"- **{s.key}**: {s.title} — `astramq-bench {s.mode} {' '.join(s.bench_args())}`")
    out += ["", "## Notes", ""]
    out += [f"- {note}" for note in meta["notes"]]
    problems = []
    for s in scenarios:
        for t in targets:
            entry = results.get(s.key, {}).get(t.key, {})
            errors = entry.get("error") or "; ".join((entry.get("report") or {}).get("errors", [])[:3])
            if not errors and (entry.get("report") or {}).get("first_error"):
                errors = entry["report"]["first_error"]
            if errors:
                problems.append(f"- {s.key} / {t.name}: {errors}")
    if problems:
        out += ["", "## Problems seen", ""] + problems
    return "\n".join(out) + "\n"


def short(text, limit=80):
    text = (text or "unknown").replace("|", "/").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"
