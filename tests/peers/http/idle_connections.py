#!/usr/bin/env python3
"""Benchmark client: opens N keep-alive TLS connections to ADDR (one request each, answered),
prints "N open", and holds them idle until its stdin closes. Certificates are not verified: this
measures the server's memory per idle connection, nothing else."""
import socket
import ssl
import sys

addr, count = sys.argv[1], int(sys.argv[2])
host, port = addr.rsplit(":", 1)
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE
context.set_alpn_protocols(["http/1.1"])
held = []
for _ in range(count):
    raw = socket.create_connection((host, int(port)), timeout=30)
    tls = context.wrap_socket(raw, server_hostname="api.test")
    tls.sendall(b"GET /files/users.json HTTP/1.1\r\nHost: api.test\r\n\r\n")
    response = b""
    while b"\r\n\r\n" not in response:
        response += tls.recv(65536)
    head, _, body = response.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += tls.recv(65536)
    held.append(tls)
print(f"{len(held)} open", flush=True)
sys.stdin.read()
for tls in held:
    tls.close()
