#!/usr/bin/env python3
"""Test-only command agent for the two-guest VM tier (runs in guest B).

Guest A's scenario drives guest B through it over the guests' private
network: one JSON request per connection, {"cmd": "<bash>", "timeout": s},
answered with {"rc": int, "out": str}. Commands run with bash, the VM-tier
helpers (lib.sh) already sourced. Background processes a command starts
must redirect their output (the agent waits for the command's pipe).
Never installed anywhere: it exists only inside the test guest.
"""
import json
import os
import socketserver
import subprocess
import sys

PRELUDE = '. "$VM_LIB"\n. "$ROOT/tests/vm/cluster2/lib2.sh"\nset -euo pipefail\n'


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        req = json.loads(self.rfile.readline())
        try:
            p = subprocess.run(
                ["bash", "-c", PRELUDE + req["cmd"]],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=req.get("timeout", 600),
                check=False,
            )
            ans = {"rc": p.returncode, "out": p.stdout.decode(errors="replace")}
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode(errors="replace")
            ans = {"rc": 124, "out": out + "\nagent: command timed out\n"}
        self.wfile.write((json.dumps(ans) + "\n").encode())


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    with Server((host, port), Handler) as s:
        print(f"agent: listening on {host}:{port}", flush=True)
        s.serve_forever()


def client():
    """onb: python3 agent.py --call HOST PORT TIMEOUT CMD"""
    import socket

    host, port, timeout, cmd = sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
    with socket.create_connection((host, port), timeout=30) as c:
        c.settimeout(timeout + 30)
        c.sendall((json.dumps({"cmd": cmd, "timeout": timeout}) + "\n").encode())
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = c.recv(65536)
            if not chunk:
                break
            buf += chunk
    ans = json.loads(buf)
    sys.stdout.write(ans["out"])
    sys.exit(ans["rc"])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--call":
        client()
    else:
        os.environ.setdefault("VM_LIB", os.path.join(os.path.dirname(__file__), "..", "lib.sh"))
        main()
