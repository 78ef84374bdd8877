"""Network clients for the LBRY protocols; used by the `prism` client commands and the upstream stores.

    PeerClient(host, port, timeout).get_blob(hash, expected_length=None) -> bytes; has_blobs(hashes) -> set
    ReflectorClient(host, port, timeout).send_stream(sd_hash, sd_bytes, blob_reader) -> UploadStats
    HttpBlobClient(base_url, timeout, edge_token="").get(hash) -> (bytes, Trace); has(hash) -> bool

Every blob a client downloads is verified against its SHA-384 (HashMismatch otherwise); a missing blob
is BlobNotFound; timeouts are per operation (one message, or one whole blob) and raise TimeoutError with
"i/o timeout" in the message; every error message is one line. Clients are not thread-safe: use one per
thread (or a pool of them).
"""
from appliance.clients.http import HttpBlobClient
from appliance.clients.peer import PeerClient
from appliance.clients.reflector import ReflectorClient, UploadStats

__all__ = ["HttpBlobClient", "PeerClient", "ReflectorClient", "UploadStats"]
