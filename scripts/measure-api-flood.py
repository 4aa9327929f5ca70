#!/usr/bin/env python3
"""Measures the daemon under a flood of its local API (issue #15, finding 3), as an attacker on the
same host would send it: 100 connections to a wrong path announcing and sending 2 MB bodies, then
1,100 idle connections; prints the daemon's resident memory and how an authorised request fares
during the flood and once the 5 s header-read timeout has closed the idle connections.

Usage: scripts/measure-api-flood.py [PATH-TO-PEERCACHE]   (default: target/release/peercache)
Sharing is off and the upstream is unreachable: nothing leaves loopback.
"""
import os, socket, subprocess, time, json, sys, tempfile
binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/peercache"
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
home = tempfile.mkdtemp()
env = dict(os.environ, PEERCACHE_HOME=home, PEERCACHE_CACHE_DIR=home + "/cache",
           PEERCACHE_API_URL="http://127.0.0.1:9", PEERCACHE_P2P="false")
env.pop("PEERCACHE_SECRET", None)
out = subprocess.run([binary, "serve", "--daemon"], env=env, capture_output=True, text=True)
api = [l.split("=",1)[1] for l in out.stdout.splitlines() if l.startswith("PEERCACHE_API=")][0]
pid = json.load(open(home + "/serve.json"))["pid"]
port = int(api.split(":")[2].split("/")[0])
def kb(field):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith(field): return int(l.split()[1])
def mb(field): return kb(field) / 1024
print(f"idle: VmRSS {mb('VmRSS:'):.1f} MB")
body = b"x" * (2 * 1024 * 1024)
socks = []
for i in range(100):
    s = socket.create_connection(("127.0.0.1", port))
    s.setblocking(False)
    try:
        s.send(b"POST /wrong/path HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
        s.send(body)
    except BlockingIOError:
        pass
    socks.append(s)
time.sleep(2)
print(f"100 connections with 2 MB bodies to a wrong path: VmRSS {mb('VmRSS:'):.1f} MB, peak {mb('VmHWM:'):.1f} MB")
for s in socks: s.close()
idle = []
for i in range(1100):
    try:
        idle.append(socket.create_connection(("127.0.0.1", port)))
    except OSError as e:
        print("connect failed", e); break
time.sleep(1)
print(f"1,100 idle connections: VmRSS {mb('VmRSS:'):.1f} MB, peak {mb('VmHWM:'):.1f} MB")
t = time.time()
cap = api.rsplit("/",1)[1]
s = socket.create_connection(("127.0.0.1", port), timeout=30)
s.send(f"GET /{cap}/api/ping HTTP/1.1\r\nHost: x\r\n\r\n".encode())
resp = s.recv(100)
print(f"an authorised ping meanwhile: {resp.splitlines()[0].decode()} in {1000*(time.time()-t):.1f} ms")
time.sleep(6)
print(f"6 s later: VmRSS {mb('VmRSS:'):.1f} MB")
t = time.time()
s = socket.create_connection(("127.0.0.1", port), timeout=30)
s.send(f"GET /{cap}/api/ping HTTP/1.1\r\nHost: x\r\n\r\n".encode())
resp = s.recv(100)
print(f"an authorised ping then: {resp.splitlines()[0].decode()} in {1000*(time.time()-t):.1f} ms")
for s2 in idle: s2.close()
subprocess.run([binary, "stop"], env=env, capture_output=True)
import shutil
shutil.rmtree(home, ignore_errors=True)
