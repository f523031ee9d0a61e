#!/usr/bin/env python3
"""A loopback TCP proxy that can break the connections it carries, for fault tests.

Usage: fault_proxy.py LISTEN_PORT_FILE TARGET_HOST TARGET_PORT MODE_FILE

It binds 127.0.0.1 on an ephemeral port and writes the port number to LISTEN_PORT_FILE
(atomically) once it accepts connections. For every new connection it reads MODE_FILE
(a missing or empty file means "pass"):
  pass   forward both ways until either side closes;
  drop   close the client connection at once (the server is never contacted);
  stall  accept and read from the client, never answer, never close: the client's own
         timeout must end it;
  cut    forward, but close both sides after the first chunk the server sends back
         (a response cut in the middle).
Existing connections keep the mode they started with. SIGTERM ends the proxy.
"""
import os
import selectors
import socket
import sys
import threading


def read_mode(path):
    try:
        with open(path, encoding="ascii") as f:
            mode = f.read().strip()
    except FileNotFoundError:
        return "pass"
    return mode or "pass"


def pump(client, server, cut_after_first_reply):
    sel = selectors.DefaultSelector()
    sel.register(client, selectors.EVENT_READ, server)
    sel.register(server, selectors.EVENT_READ, client)
    try:
        while True:
            for key, _ in sel.select():
                src, dst = key.fileobj, key.data
                data = src.recv(65536)
                if not data:
                    return
                dst.sendall(data)
                if cut_after_first_reply and src is server:
                    return
    except OSError:
        return
    finally:
        sel.close()
        for s in (client, server):
            try:
                s.close()
            except OSError:
                pass


def stall(client):
    try:
        while client.recv(65536):
            pass
    except OSError:
        pass
    finally:
        client.close()


def handle(client, target, mode_file):
    mode = read_mode(mode_file)
    if mode == "drop":
        client.close()
        return
    if mode == "stall":
        stall(client)
        return
    try:
        server = socket.create_connection(target, timeout=10)
        server.settimeout(None)
    except OSError:
        client.close()
        return
    pump(client, server, cut_after_first_reply=(mode == "cut"))


def main():
    if len(sys.argv) != 5:
        sys.stderr.write(__doc__)
        return 2
    port_file, host, port, mode_file = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    tmp = port_file + ".tmp"
    with open(tmp, "w", encoding="ascii") as f:
        f.write(f"{listener.getsockname()[1]}\n")
    os.replace(tmp, port_file)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=handle, args=(client, (host, port), mode_file), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
