"""HTTP/2 abuse a well-behaved client never sends, for the gateway's bad-input tests.

usage: h2flood.py HOST PORT CA_FILE SERVER_NAME MODE COUNT
  MODE rapid-reset:  COUNT requests, each cancelled (RST_STREAM) right after its HEADERS
  MODE continuation: one HEADERS without END_HEADERS, then up to COUNT CONTINUATION frames of
                     16 KiB header block each, never ending the block
Prints one JSON line: what the server answered (GOAWAY and its error code, RST_STREAMs,
responses) and how much was sent before the connection ended.
"""

import json
import socket
import ssl
import sys

import h2.config
import h2.connection
import h2.events
import hpack
import hyperframe.frame as frames

host, port, ca, name, mode, count = sys.argv[1:7]
count = int(count)
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(["h2"])
sock = ctx.wrap_socket(socket.create_connection((host, int(port)), timeout=10), server_hostname=name)
conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True))
conn.initiate_connection()
sock.sendall(conn.data_to_send())
result = {"goaway": None, "resets": 0, "responses": 0, "sent_frames": 0, "closed": False}
headers = [(":method", "GET"), (":scheme", "https"), (":authority", name), (":path", "/items")]


def send(data):
    try:
        sock.sendall(data)
        return True
    except OSError:
        result["closed"] = True
        return False


if mode == "rapid-reset":
    for i in range(count):
        stream = 1 + 2 * i
        conn.send_headers(stream, headers, end_stream=True)
        conn.reset_stream(stream)
        result["sent_frames"] += 2
        if not send(conn.data_to_send()):
            break
elif mode == "continuation":
    encoder = hpack.Encoder()
    block = encoder.encode(headers)
    first = frames.HeadersFrame(1, data=block)
    first.flags.add("END_STREAM")
    send(first.serialize())
    filler = encoder.encode([("x-filler", "a" * 16000)])
    for _ in range(count):
        if not send(frames.ContinuationFrame(1, data=filler).serialize()):
            break
        result["sent_frames"] += 1

sock.settimeout(3)
try:
    while True:
        data = sock.recv(65536)
        if not data:
            result["closed"] = True
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ConnectionTerminated):
                result["goaway"] = int(event.error_code)
            elif isinstance(event, h2.events.StreamReset):
                result["resets"] += 1
            elif isinstance(event, h2.events.ResponseReceived):
                result["responses"] += 1
except (socket.timeout, ssl.SSLError, OSError, h2.exceptions.ProtocolError):
    pass
print(json.dumps(result))
