"""The GeventServer contract the supervisor relies on, exercised in a real gevent process."""
import json
import subprocess
import sys

SCRIPT = r"""
from gevent import monkey
monkey.patch_all()
import json, socket, time
import gevent
from appliance.blob import blob_hash
from appliance.servers.http import HttpServer
from appliance.servers.standalone import listen
from appliance.stores.memory import MemoryStore

class SlowStore(MemoryStore):
    def get(self, hash_):
        time.sleep(0.5)  # a transfer that takes a while (cooperative: time is patched)
        return super().get(hash_)

store = SlowStore()
store.put(blob_hash(b"x"), b"x")
listener = listen("127.0.0.1", 0)
port = listener.getsockname()[1]
result = {}

def get(sock):
    sock.sendall(f"GET /blob?hash={blob_hash(b'x')} HTTP/1.1\r\n\r\n".encode())
    data = b""
    while not data.endswith(b"\r\n\r\nx"):
        chunk = sock.recv(4096)
        if not chunk:
            return "closed"
        data += chunk
    return data.split(b" ")[1].decode()

a = HttpServer(listener, store)
a.start()
idle = socket.create_connection(("127.0.0.1", port))
result["first"] = get(idle)  # now an idle keep-alive connection
busy = socket.create_connection(("127.0.0.1", port))
transfer = gevent.spawn(get, busy)
deadline = time.monotonic() + 5
while a.wait_idle(0) and time.monotonic() < deadline:  # until the transfer is under way
    gevent.sleep(0.01)
result["connections"] = a.connections
result["idle_while_busy"] = a.wait_idle(0.05)
a.stop_accepting()
waiting = socket.create_connection(("127.0.0.1", port))  # queued in the backlog, not refused
waiting_get = gevent.spawn(get, waiting)
result["idle_after_transfer"] = a.wait_idle(5)
result["transfer"] = transfer.get(timeout=5)
result["requests"] = a.requests
a.close_connections()
result["idle_closed"] = idle.recv(10) == b""
result["listener_open"] = listener.fileno() != -1
b = HttpServer(listener, store)  # the respawned worker takes over the same socket
b.start()
result["queued_served_by_successor"] = waiting_get.get(timeout=5)
b.close()
print(json.dumps(result))
"""


def test_graceful_stop_keeps_the_listener_for_a_successor():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result == {
        "first": "200", "connections": 2, "idle_while_busy": False, "idle_after_transfer": True,
        "transfer": "200", "requests": 2, "idle_closed": True, "listener_open": True,
        "queued_served_by_successor": "200",
    }
