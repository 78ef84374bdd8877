"""`prism upload` as a real subprocess against moto (S3) and a real MariaDB."""
import json
import os
import subprocess
import sys
from pathlib import Path

from appliance.blob import blob_hash
from tests.servers.streams import make_stream

ROOT = Path(__file__).resolve().parents[1]


def prism(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "appliance.cli.prism", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def write_config(tmp_path: Path, s3_bucket, mysql_db, **extra) -> str:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**s3_bucket.config_values(), "db_conn": mysql_db.dsn, **extra}))
    return str(path)


def test_upload_a_directory_to_s3_and_mysql(tmp_path, s3_bucket, mysql_db):
    stream = make_stream(3, blob_size=4096)
    blobs_dir = tmp_path / "blobs"
    blobs_dir.mkdir()
    (blobs_dir / stream.sd_hash).write_bytes(stream.sd_blob)
    content = list(stream.blobs.items())
    for h, data in content[:2]:
        (blobs_dir / h).write_bytes(data)
    h3, data3 = content[2]
    (blobs_dir / h3[:2]).mkdir()
    (blobs_dir / h3[:2] / h3).write_bytes(data3)  # reflector.go's disk layout
    (blobs_dir / "tmp").mkdir()
    (blobs_dir / "tmp" / "partial").write_bytes(b"half an upload")  # never uploaded
    wrong = blobs_dir / ("0" * 96)
    wrong.write_bytes(b"not what the name says")
    conf = write_config(tmp_path, s3_bucket, mysql_db)

    done = prism("upload", str(blobs_dir), "--workers", "4", "--conf", conf)
    assert done.returncode == 1  # the misnamed file is an error
    assert done.stderr.count("\n") == 1 and "file name does not match hash" in done.stderr and str(wrong) in done.stderr
    assert done.stdout.strip() == (f"uploaded {blobs_dir}: 5 files, 0 already stored, 1 sd blob, "
                                   "3 content blobs, 1 error")
    assert s3_bucket.keys() == {stream.sd_hash, *stream.blobs}
    rows = dict(mysql_db.query("SELECT hash, is_stored FROM blob_"))
    assert rows == {h: 1 for h in (stream.sd_hash, *stream.blobs)}
    assert mysql_db.query("SELECT hash FROM stream") == [(stream.sd.stream_hash,)]
    assert mysql_db.query("SELECT COUNT(*) FROM stream_blob") == [(3,)]

    wrong.unlink()
    again = prism("upload", str(blobs_dir), "--conf", conf)
    assert again.returncode == 0, again.stderr
    assert "4 files, 4 already stored, 0 sd blobs, 0 content blobs, 0 errors" in again.stdout

    s3_bucket.client().delete_object(Bucket=s3_bucket.bucket, Key=h3)
    forced = prism("upload", str(blobs_dir), "--skipExistsCheck", "--deleteBlobsAfterUpload=true", "--conf", conf)
    assert forced.returncode == 0, forced.stderr
    assert "4 files, 0 already stored, 1 sd blob, 3 content blobs, 0 errors" in forced.stdout
    assert h3 in s3_bucket.keys()
    assert sorted(p.name for p in blobs_dir.rglob("*") if p.is_file()) == ["partial"]


def test_single_file_and_bad_sd_blobs(tmp_path, s3_bucket, mysql_db):
    conf = write_config(tmp_path, s3_bucket, mysql_db)
    data = os.urandom(1000)
    one = tmp_path / blob_hash(data)
    one.write_bytes(data)
    done = prism("upload", str(one), "--conf", conf)
    assert done.returncode == 0 and "1 content blob," in done.stdout
    bad_sd = json.dumps({"stream_hash": "", "blobs": []}).encode()  # JSON, so an sd blob, but not a valid one
    bad = tmp_path / blob_hash(bad_sd)
    bad.write_bytes(bad_sd)
    failed = prism("upload", str(bad), "--conf", conf)
    assert failed.returncode == 1 and "invalid sd blob" in failed.stderr
    assert blob_hash(bad_sd) not in s3_bucket.keys()
    assert mysql_db.query("SELECT COUNT(*) FROM blob_") == [(1,)]


def test_clear_errors_for_bad_setups(tmp_path, s3_bucket, mysql_db):
    data = b"blob"
    path = tmp_path / blob_hash(data)
    path.write_bytes(data)
    no_bucket = prism("upload", str(path), "--conf", write_config(tmp_path, s3_bucket, mysql_db,
                                                                  bucket_name="missing-bucket"))
    assert no_bucket.returncode == 1 and no_bucket.stderr == "prism: bucket missing-bucket does not exist\n"
    no_db = prism("upload", str(path), "--conf", write_config(tmp_path, s3_bucket, mysql_db, db_conn=""))
    assert no_db.returncode == 2 and "db_conn" in no_db.stderr
    assert prism("upload", str(tmp_path / "nothing-here"), "--conf", "none").returncode == 2
    assert prism("upload", str(path), "--workers", "0", "--conf", "none").returncode == 2
    assert s3_bucket.keys() == set()
