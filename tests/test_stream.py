"""Stream format: the SDK's streams rebuilt and re-made byte for byte, spec §2.4-2.5 vectors, corrupt sd blobs."""
import hashlib
import io
import json
import os
import tracemalloc

import pytest

from appliance import stream
from appliance.blob import MAX_BLOB_SIZE, blob_hash
from appliance.stream import BlobInfo, InvalidStreamDescriptor, StreamDescriptor
from tests.vectors import vectors_dir

FOLDERS = ["fbf470131440", "712f046eb344", "96d36b7ffb4b"]  # streams a, b, c of vectors/streams/index.json


def test_index_lists_the_streams_we_test():
    index = json.loads((vectors_dir() / "streams/index.json").read_text())
    assert sorted(s["folder"] for s in index["streams"]) == sorted(FOLDERS)


def load(folder: str):
    path = vectors_dir() / "streams" / folder
    manifest = json.loads((path / "manifest.json").read_text())
    return path, manifest


# reflector.go's own sd blob (spec §2.3): Go key order, must parse and keep its bytes (hash below).
GO_SD_BLOB = (
    b'{"stream_name": "43617375616c6c79204578706c61696e6564202d2054686520537065637472756d206f6620496e74656'
    b'c6c6967656e63652e6d7034", "blobs": [{"length": 2097152, "blob_num": 0, "blob_hash": "a2f1841bb9c5f3b'
    b'583ac3b8c07ee1a5bf9cc48923721c30d5ca6318615776c284e8936d72fa4db7fdda2e4e9598b1e6c", "iv": "0553e3eb1'
    b'7916333d3468286a30738f1"}, {"length": 2097152, "blob_num": 1, "blob_hash": "0c9675ad7f40f29dcd41883e'
    b'd9cf7e145bbb13976d9b83ab9354f4f61a87f0f7771a56724c2aa7a5ab43c68d7942e5cb", "iv": "d4e94a3cc6dd5ef0f9'
    b'0d25cd73de5584"}, {"length": 2097152, "blob_num": 2, "blob_hash": "a4d07d442b9907036c75b6c92db316a8b'
    b'8428733bf5ec976627a48a7c862bf84db33075d54125a7c0b297bd2dc445f1c", "iv": "1c0bf1dc467a2ca5e67774868aa'
    b'ae431"}, {"length": 699504, "blob_num": 3, "blob_hash": "dcd2093f4a3eca9f6dd59d785d0bef068fee7884819'
    b'86aa894cf72ed4d992c0ff9d19d1743525de2f5c3c62f5ede1c58", "iv": "14881d23e88e74d1c1715fff0f12b216"}, {'
    b'"length": 0, "blob_num": 4, "iv": "8e7405e96eeeaf3e0720ca3e191fe38e"}], "stream_type": "lbryfile", "'
    b'key": "b450f70bd285726e470428df6c6ff8d2", "suggested_file_name": "43617375616c6c79204578706c61696e65'
    b'64202d2054686520537065637472756d206f6620496e74656c6c6967656e63652e6d7034", "stream_hash": "d756e860d'
    b'8f49d03937c1a35a560636e792d97bee6f9660fc69e206cbcfe7f9297c5ede8428dd5f17d240e434eb557da"}'
)


GO_SD_HASH = "1bf7d39c45d1a38ffa74bff179bf7f67d400ff57fa0b5a0308963f08d01712b3079530a8c188e8c89d9b390c6ee06f05"


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_file_is_named_by_its_hash(folder):
    path, manifest = load(folder)
    names = [p.name for p in path.iterdir() if p.name not in ("plain.bin", "manifest.json")]
    assert len(names) == len(manifest["blobs"])  # content blobs + sd blob (the terminator has no file)
    for name in names:
        assert blob_hash((path / name).read_bytes()) == name


@pytest.mark.parametrize("folder", FOLDERS)
def test_sd_blob_parses_and_matches_the_manifest(folder):
    path, manifest = load(folder)
    raw = (path / manifest["sd_hash"]).read_bytes()
    desc = stream.parse_sd_blob(raw)
    assert desc.raw == raw and desc.sd_hash == manifest["sd_hash"]
    assert desc.stream_hash == manifest["stream_hash"] and desc.key == manifest["key"]
    assert desc.stream_name == manifest["stream_name"]
    assert desc.suggested_file_name == manifest["suggested_file_name"]
    assert [(b.blob_num, b.length, b.iv, b.blob_hash or None) for b in desc.blobs] == \
        [(b["blob_num"], b["length"], b["iv"], b["blob_hash"]) for b in manifest["blobs"]]
    # re-derive the stream hash and rebuild the JSON from the manifest, byte for byte
    infos = [BlobInfo(b["blob_num"], b["length"], b["iv"], b["blob_hash"] or "") for b in manifest["blobs"]]
    assert stream.compute_stream_hash(manifest["stream_name"], manifest["key"], manifest["suggested_file_name"],
                                      infos) == manifest["stream_hash"]
    rebuilt = StreamDescriptor.build(manifest["stream_name"], manifest["key"], manifest["suggested_file_name"], infos)
    assert rebuilt.raw == raw and rebuilt.same_stream(desc)


@pytest.mark.parametrize("folder", FOLDERS)
def test_blobs_decrypt_to_the_original_file(folder):
    path, manifest = load(folder)
    desc = stream.parse_sd_blob((path / manifest["sd_hash"]).read_bytes())
    out = io.BytesIO()
    total = stream.decrypt_stream(desc, lambda info: (path / info.blob_hash).read_bytes(), out)
    plain = (path / "plain.bin").read_bytes()
    assert out.getvalue() == plain and total == manifest["plain_length"] == len(plain)
    key = bytes.fromhex(manifest["key"])
    for b in manifest["blobs"][:-1]:  # every piece sits at the manifest's offset
        piece = stream.decrypt_blob(key, bytes.fromhex(b["iv"]), (path / b["blob_hash"]).read_bytes())
        assert piece == plain[b["plain_offset"]:b["plain_offset"] + b["plain_length"]]


@pytest.mark.parametrize("folder", FOLDERS)
def test_reencrypting_the_file_reproduces_every_blob(folder, tmp_path):
    path, manifest = load(folder)
    plain = path / "plain.bin"
    made = stream.make_stream(str(plain), out_dir=str(tmp_path), stream_name=manifest["stream_name"],
                              key=bytes.fromhex(manifest["key"]),
                              ivs=[bytes.fromhex(b["iv"]) for b in manifest["blobs"]])
    assert made.descriptor.sd_hash == manifest["sd_hash"]
    assert made.source_hash == manifest["plain_sha384"] and made.source_length == manifest["plain_length"]
    expected = {p.name for p in path.iterdir()} - {"plain.bin", "manifest.json"}
    assert {p.name for p in tmp_path.iterdir()} == expected
    for name in expected:
        assert (tmp_path / name).read_bytes() == (path / name).read_bytes()
    # re-encoding from the sd blob alone (prism send --sd-cache) gives the same stream
    template = stream.parse_sd_blob((path / manifest["sd_hash"]).read_bytes())
    again = stream.make_stream(str(plain), template=template)
    assert again.descriptor is template
    reader = stream.FileBlobReader(str(plain), template)
    for info in template.content_blobs:
        assert reader(info.blob_hash) == (path / info.blob_hash).read_bytes()


def test_reflector_go_sd_blob_is_kept_verbatim():
    assert len(GO_SD_BLOB) == 1289
    desc = stream.parse_sd_blob(GO_SD_BLOB)
    assert desc.sd_hash == GO_SD_HASH and desc.raw == GO_SD_BLOB
    assert desc.stream_name == "Casually Explained - The Spectrum of Intelligence.mp4"
    assert len(desc.content_blobs) == 4 and desc.blobs[-1] == BlobInfo(4, 0, "8e7405e96eeeaf3e0720ca3e191fe38e")
    # the SDK form of the same stream is other bytes: a received sd blob must never be re-serialised
    assert StreamDescriptor.build(desc.stream_name, desc.key, desc.suggested_file_name, desc.blobs).raw != GO_SD_BLOB


def test_aes_and_pkcs7_vectors():
    key, iv = bytes.fromhex("efad181bb91c18e93a57178559a42f21"), bytes.fromhex("032cb97fa5292b3109a67239f7c626aa")
    assert stream.encrypt_blob(key, iv, b"abcdefg").hex() == "33adfa34104bf90f0cc1d033104c0cdb"
    assert stream.decrypt_blob(key, iv, bytes.fromhex("33adfa34104bf90f0cc1d033104c0cdb")) == b"abcdefg"
    cases = [(b"", b"\x10" * 16), (b"\x00", b"\x00" + b"\x0f" * 15), (b"abcdefg", b"abcdefg" + b"\x09" * 9),
             (b"\x00" * 15, b"\x00" * 15 + b"\x01"), (b"\x00" * 16, b"\x00" * 16 + b"\x10" * 16),
             (b"\x00" * 20, b"\x00" * 20 + b"\x0c" * 12)]
    for plain, padded in cases:
        assert stream.pkcs7_pad(plain) == padded and stream.pkcs7_unpad(padded) == plain
    with pytest.raises(ValueError, match="cannot encrypt empty slice"):
        stream.encrypt_blob(key, iv, b"")


def test_bad_padding_and_lengths_are_refused():
    for bad, message in [(b"", "invalid data length 0"), (b"\x01" * 15, "invalid data length 15"),
                         (b"\x00" * 16, "invalid padding"), (b"\x00" * 15 + b"\x11", "invalid padding"),
                         (b"\x00" * 14 + b"\x01\x02", "invalid padding")]:
        with pytest.raises(stream.DecryptionError, match=message):
            stream.pkcs7_unpad(bad)
    key, iv = os.urandom(16), os.urandom(16)
    with pytest.raises(stream.DecryptionError, match="invalid data length 17"):
        stream.decrypt_blob(key, iv, b"x" * 17)
    # a ciphertext decrypted with the wrong key almost never ends in valid padding; count is deterministic
    ciphertext = stream.encrypt_blob(key, iv, b"hello world")
    failures = 0
    for i in range(20):
        try:
            stream.decrypt_blob(hashlib.sha256(bytes([i])).digest()[:16], iv, ciphertext)
        except stream.DecryptionError:
            failures += 1
    assert failures >= 15


def test_stream_hash_vectors():
    terminator = BlobInfo(0, 0, "00" * 16)
    assert terminator.digest().hex() == ("cda3ab14d0de147d2380637c644afbadff072b12353d1acaf79af718d39bff501e47c47e"
                                         "926a2680d477f5fbb9f3b5ce")
    assert stream.compute_stream_hash("", "00" * 16, "", [terminator]) == (
        "4d9a9ce3d72af9f171c4233738e08440937cf906eb506a5d573c0e5500c58500b0a6cbaedc9be2c863750859c01d9954")
    info = BlobInfo(24, 1761808, "30303030303030303030303030303235",
                    "f774e1adb8b1fc18b037015844c2469e2166006fcd739e1befca81ccd3df537dfe61041904187e1b88e7636c1848baca")
    assert info.digest().hex() == ("2c8cb2893668ef3ad30bda5b3361c0736d746d82fb16155d1510c4d2c5e4481d49ee747f155b2f"
                                   "1156849d422f13a7be")


def test_encoder_edge_cases():
    empty = stream.StreamEncoder(io.BytesIO(b""))
    assert list(empty.blobs()) == []
    assert len(empty.descriptor.blobs) == 1 and empty.descriptor.blobs[0].length == 0
    assert stream.parse_sd_blob(empty.descriptor.raw).same_stream(empty.descriptor)
    small = stream.StreamEncoder(io.BytesIO(b"x" * 12), stream_name="a/b?.txt")
    gen = small.blobs()
    info, data = next(gen)
    assert info.length == 16 == len(data) and small.descriptor is None  # not terminated yet
    assert list(gen) == [] and len(small.descriptor.blobs) == 2
    assert small.descriptor.suggested_file_name == "ab.txt" and small.descriptor.stream_name == "a/b?.txt"
    two = stream.StreamEncoder(io.BytesIO(b"y" * MAX_BLOB_SIZE))
    assert [i.length for i, _ in two.blobs()] == [MAX_BLOB_SIZE, 16]


class TrickleReader(io.RawIOBase):
    """A pipe-like source: short reads of at most 100,000 bytes, generated on the fly."""

    def __init__(self, size: int):
        self.left = size

    def readable(self):
        return True

    def read(self, n=-1):
        n = min(self.left, 100_000, n if n >= 0 else self.left)
        self.left -= n
        return b"z" * n


def test_short_reads_still_make_full_pieces():
    enc = stream.StreamEncoder(TrickleReader(5_000_000))
    assert [i.length for i, _ in enc.blobs()] == [MAX_BLOB_SIZE, MAX_BLOB_SIZE, 805_712]
    assert enc.source_length == 5_000_000


def test_big_file_is_never_held_in_memory(tmp_path):
    path = tmp_path / "big.bin"
    with open(path, "wb") as f:
        for _ in range(24):
            f.write(os.urandom(1 << 20))
    tracemalloc.start()
    try:
        made = stream.make_stream(str(path), out_dir=str(tmp_path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert made.source_length == 24 << 20 and len(made.descriptor.content_blobs) == 13
    assert peak < 12 << 20  # a few 2 MiB pieces at most, never the 24 MiB file
    out = io.BytesIO()
    stream.decrypt_stream(made.descriptor, lambda i: (tmp_path / i.blob_hash).read_bytes(), out)
    assert hashlib.sha384(out.getvalue()).hexdigest() == made.source_hash


def test_changed_file_is_detected_when_reencrypting(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"a" * 5000)
    made = stream.make_stream(str(path))
    path.write_bytes(b"b" * 5000)
    with pytest.raises(stream.StreamMismatch, match="changed"):
        stream.FileBlobReader(str(path), made.descriptor)(made.descriptor.blobs[0].blob_hash)
    again = stream.make_stream(str(path), template=made.descriptor)  # same key and IVs, new content
    assert again.descriptor is not made.descriptor and again.descriptor.key == made.descriptor.key
    assert [b.iv for b in again.descriptor.blobs] == [b.iv for b in made.descriptor.blobs]


def test_decrypt_stream_refuses_a_wrong_blob():
    enc = stream.StreamEncoder(io.BytesIO(b"q" * 100))
    blobs = dict((i.blob_hash, d) for i, d in enc.blobs())
    with pytest.raises(stream.StreamMismatch, match="does not match"):
        stream.decrypt_stream(enc.descriptor, lambda i: blobs[i.blob_hash][:-16] + b"\x00" * 16, io.BytesIO())


def _sd(**changes) -> bytes:
    enc = stream.StreamEncoder(io.BytesIO(b"p" * 3000), stream_name="x.bin")
    list(enc.blobs())
    obj = json.loads(enc.descriptor.raw)
    for key, value in changes.items():
        if callable(value):
            value(obj)
        else:
            obj[key] = value
    return json.dumps(obj, sort_keys=True).encode()


@pytest.mark.parametrize("raw,message", [
    (b"not json", "does not decode as valid JSON"),
    (b"\xff\xfe", "does not decode as valid JSON"),
    (b"[1]", "not a JSON object"),
    (b"[" * 5000 + b"]" * 5000, "does not decode as valid JSON"),
    (_sd(blobs=[]), "blobs is missing or empty"),
    (_sd(blobs=lambda o: o["blobs"].pop()), "does not end with a zero-length blob"),
    (_sd(blobs=lambda o: o["blobs"][-1].update(blob_hash="ab" * 48)), "terminator blob should not have a hash"),
    (_sd(blobs=lambda o: o["blobs"][0].update(blob_num=1)), "out of order"),
    (_sd(blobs=lambda o: o["blobs"].insert(1, {"blob_num": 1, "iv": "00" * 16, "length": 0})),
     "out of order|zero-length data blob"),
    (_sd(blobs=lambda o: o["blobs"][0].update(length=0)), "zero-length data blob"),
    (_sd(blobs=lambda o: o["blobs"][0].update(length=17)), "impossible length"),
    (_sd(blobs=lambda o: o["blobs"][0].update(length="16")), "must be integers"),
    (_sd(blobs=lambda o: o["blobs"][0].update(iv="zz" * 16)), "iv must be"),
    (_sd(blobs=lambda o: o["blobs"][0].update(blob_hash="AB" * 48)), "blob_hash must be"),
    (_sd(blobs=lambda o: o["blobs"][0].pop("blob_hash")), "has no blob_hash"),
    (_sd(blobs=lambda o: o["blobs"][0].update(length=32)), "stream hash does not match"),
    (_sd(key="00" * 15), "key must be"),
    (_sd(stream_hash="00" * 48), "stream hash does not match"),
    (_sd(stream_hash=None), "stream_hash must be"),
    (_sd(stream_name="zz"), "stream_name is not hex"),
    (_sd(suggested_file_name="ff"), "suggested_file_name is not hex of UTF-8"),
    (_sd(stream_name="782e62696e0a"), "stream hash does not match"),
])
def test_corrupt_sd_blobs_are_refused_with_one_line(raw, message):
    with pytest.raises(InvalidStreamDescriptor, match=message) as err:
        stream.parse_sd_blob(raw)
    assert "\n" not in str(err.value) and str(err.value).startswith("invalid sd blob: ")


def test_sanitize_file_name():
    cases = {
        "video.mp4": "video.mp4", "café ünïcode.txt": "café ünïcode.txt", "../../etc/passwd": "etcpasswd",
        "..": "lbry_download", ".": "lbry_download", "": "lbry_download", "   ": "lbry_download",
        "a\\b/c": "abc", 'x<>:"|?*y': "xy", "bad\x00\x1f\x7f\x85name": "badname", " name. . ": "name",
        "CON": "_CON", "com1.txt": "_com1.txt", "/": "lbry_download", "C:\\Windows\\x.exe": "CWindowsx.exe",
    }
    for dirty, clean in cases.items():
        assert stream.sanitize_file_name(dirty) == clean, dirty
    long = stream.sanitize_file_name("é" * 300 + ".mkv")
    assert len(long.encode()) <= 255 and long.endswith(".mkv")
    assert stream.sanitize_file_name("..", default="") == ""
