import hashlib

import pytest

from appliance import blob
from appliance.errors import classify


def test_hash_validation():
    good = hashlib.sha384(b"x").hexdigest()
    assert blob.check_hash(good) == good
    for bad in ["", good.upper(), good[:-1], good + "0", "../" + good[3:], None, 5, "g" * 96]:
        assert not blob.is_valid_hash(bad)
        with pytest.raises(blob.InvalidBlobHash):
            blob.check_hash(bad)


def test_sizes_use_reflector_go_wording():
    assert blob.check_size(1) == 1 and blob.check_size(blob.MAX_BLOB_SIZE) == blob.MAX_BLOB_SIZE
    with pytest.raises(blob.InvalidBlobSize, match="0-byte blob received") as zero:
        blob.check_size(0)
    with pytest.raises(blob.InvalidBlobSize, match="blob must be at most 2097152 bytes") as big:
        blob.check_size(blob.MAX_BLOB_SIZE + 1)
    assert classify(zero.value) == "zero_byte_blob" and classify(big.value) == "blob_too_big"


def test_prefix_path_is_reflector_go_layout():
    h = blob.blob_hash(b"abc")
    assert blob.prefix_path(h) == f"{h[:2]}/{h}"
    assert blob.verify(h, b"abc") and not blob.verify(h, b"abd")
