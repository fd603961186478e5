"""Process plumbing for the comparison harness: free loopback ports, broker
processes that are always cleaned up, readiness checks.

Every process started here is registered in LIVE and killed by stop_all(),
which the entry point calls on exit and on SIGINT/SIGTERM, so an interrupted
run leaves no broker behind.
"""

import os
import resource
import signal
import socket
import subprocess
import threading
import time

# Processes started and not yet stopped.
LIVE = []


def raise_fd_limit():
    """Raise this process's soft RLIMIT_NOFILE to the hard limit.

    Children inherit it: brokers need one descriptor per connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv, log_path, env=None, stdout=None):
    """Start a process in its own session, stderr (and stdout unless given)
    to log_path, and register it for clean-up."""
    log = open(log_path, "ab")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=stdout if stdout is not None else log,
        stderr=log,
        env=env,
        start_new_session=True,
    )
    log.close()
    LIVE.append(proc)
    return proc


def stop(proc, grace=5.0):
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if proc in LIVE:
        LIVE.remove(proc)


def stop_all():
    for proc in list(LIVE):
        try:
            stop(proc, grace=2.0)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def wait_for_port(proc, port, timeout=15.0):
    """Wait until 127.0.0.1:port accepts TCP connections."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with status {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"not listening on port {port} after {timeout:.0f} s")


def wait_for_line(proc, prefix, log_path, timeout=15.0):
    """Read proc's stdout until a line starting with `prefix`; return the rest
    of that line. Afterwards a thread copies stdout to log_path, so the pipe
    never fills up and blocks the process."""
    found = []
    done = threading.Event()

    def pump():
        with open(log_path, "ab") as log:
            for raw in proc.stdout:
                log.write(raw)
                line = raw.decode(errors="replace").strip()
                if not found and line.startswith(prefix):
                    found.append(line[len(prefix):])
                    done.set()
        done.set()

    threading.Thread(target=pump, daemon=True).start()
    if not done.wait(timeout) or not found:
        status = proc.poll()
        raise RuntimeError(
            f"no '{prefix}' line on stdout within {timeout:.0f} s"
            + (f" (exited with status {status})" if status is not None else "")
        )
    return found[0]


def cpu_count():
    return os.cpu_count() or 1
