#!/usr/bin/env python3
"""Plays systemd's side of the notify protocol for one process, without systemd.

notify_harness.py OUT_DIR WATCHDOG_SEC -- COMMAND...

Binds a unix datagram socket, starts COMMAND with NOTIFY_SOCKET (and WATCHDOG_USEC /
WATCHDOG_PID when WATCHDOG_SEC > 0), and appends every message it receives to
OUT_DIR/notify.log as "<seconds since start> <message with newlines as |>". The child's
pid goes to OUT_DIR/pid. Exits with the child's status once it ends.
"""
import os
import socket
import subprocess
import sys
import time


def main():
    out_dir, watchdog_sec = sys.argv[1], float(sys.argv[2])
    command = sys.argv[sys.argv.index("--") + 1:]
    path = os.path.join(out_dir, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.1)
    env = dict(os.environ, NOTIFY_SOCKET=path)
    env.pop("JOURNAL_STREAM", None)
    start = time.monotonic()
    log = open(os.path.join(out_dir, "notify.log"), "a", buffering=1)
    # WATCHDOG_PID must name the child: start it stopped behind a shell that execs.
    if watchdog_sec > 0:
        env["WATCHDOG_USEC"] = str(int(watchdog_sec * 1e6))
        child = subprocess.Popen(["/bin/sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh"] + command, env=env)
    else:
        child = subprocess.Popen(command, env=env)
    with open(os.path.join(out_dir, "pid.tmp"), "w") as f:
        f.write(f"{child.pid}\n")
    os.rename(os.path.join(out_dir, "pid.tmp"), os.path.join(out_dir, "pid"))
    while True:
        try:
            data = sock.recv(4096)
            log.write(f"{time.monotonic() - start:.3f} {data.decode(errors='replace').strip().replace(chr(10), '|')}\n")
            continue
        except socket.timeout:
            pass
        if child.poll() is not None:
            break
    # Drain what was sent just before the exit.
    sock.settimeout(0)
    try:
        while True:
            data = sock.recv(4096)
            log.write(f"{time.monotonic() - start:.3f} {data.decode(errors='replace').strip().replace(chr(10), '|')}\n")
    except (BlockingIOError, socket.timeout):
        pass
    sys.exit(child.returncode if child.returncode >= 0 else 128 - child.returncode)


if __name__ == "__main__":
    main()
