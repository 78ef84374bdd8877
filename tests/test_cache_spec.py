import pytest

from appliance.cache.spec import EXPECTED_FORMAT, DiskCacheSpec, DiskCacheSpecError, parse_disk_cache, parse_size


@pytest.mark.parametrize("text,expected", [
    ("100GB", 100 * 1024 ** 3), ("2gb", 2 * 1024 ** 3), ("2GiB", 2 * 1024 ** 3), ("5 MB", 5 * 1024 ** 2),
    ("1k", 1024), ("3KILOBYTES", 3 * 1024), ("7", 7), ("7b", 7), ("7B", 7), ("7byte", 7), ("1T", 1024 ** 4),
    ("1pib", 1024 ** 5), ("2e", 2 * 1024 ** 6), ("4mega", 4 * 1024 ** 2), ("", 0), ("15EB", 15 * 1024 ** 6),
])
def test_sizes_use_binary_units(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text,reason", [
    ("10Gb", "bits"), ("1Kb", "bits"), ("3Mb", "bits"), ("GB", "start with a number"), ("-1GB", "start with a number"),
    (" 1GB", "start with a number"), ("1.5GB", "unknown unit"), ("10XB", "unknown unit"), ("16EB", "out of range"),
    ("99999999999999999999", "out of range"),
])
def test_bad_sizes(text, reason):
    with pytest.raises(ValueError, match=reason):
        parse_size(text)


def test_lowercase_bits_spelling_is_bytes():
    # reflector.go only treats capital-prefix + lowercase b as bits; 'gb' and 'GB' are bytes
    assert parse_size("10gb") == parse_size("10GB") == parse_size("10gB")


def test_empty_means_no_cache():
    assert parse_disk_cache("") is None
    assert parse_disk_cache(None) is None


def test_valid_spec():
    assert parse_disk_cache("100GB:/tmp/downloaded_blobs:localdb") == DiskCacheSpec(
        100 * 1024 ** 3, "/tmp/downloaded_blobs", "localdb")
    assert parse_disk_cache("50MB:/srv/c/:lru").size_bytes == 50 * 1024 * 1024
    for manager in ("lfu", "arc", "simple"):
        assert parse_disk_cache(f"1G:/x:{manager}").manager == manager


@pytest.mark.parametrize("value,reason", [
    ("100GB:/tmp", "formatted incorrectly"),
    ("100GB:/tmp/a:b:lru", "formatted incorrectly"),
    ("100GB", "formatted incorrectly"),
    ("100GB:relative/path:lru", "must start with '/'"),
    ("100GB::lru", "must start with '/'"),
    ("100GB:/tmp/x:lfuda", "'lfuda' is not supported"),
    ("100GB:/tmp/x:LRU", "'LRU' is not supported"),
    ("0GB:/tmp/x:lru", "more than 0"),
    (":/tmp/x:lru", "more than 0"),
    ("10Gb:/tmp/x:lru", "bits"),
    ("ten:/tmp/x:lru", "start with a number"),
])
def test_bad_specs_are_one_line_errors_with_the_expected_format(value, reason):
    with pytest.raises(DiskCacheSpecError) as info:
        parse_disk_cache(value)
    message = str(info.value)
    assert reason in message
    assert EXPECTED_FORMAT in message
    assert "\n" not in message
