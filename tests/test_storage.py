"""Storage by URI: local paths, file:// and s3:// through a real (moto) S3 server on 127.0.0.1."""
from __future__ import annotations

import os

import pytest

from pipelines import storage


def test_local_paths_and_file_uris(tmp_path):
    plain = str(tmp_path / "a" / "b.bin")
    storage.write_bytes(plain, b"hello")
    assert storage.read_bytes(plain) == b"hello"
    as_uri = f"file://{tmp_path}/a/b.bin"
    assert storage.read_bytes(as_uri) == b"hello"
    storage.write_text(as_uri, "overwritten")
    assert storage.read_text(plain) == "overwritten"
    assert storage.ls(str(tmp_path / "a")) == [plain]
    assert storage.ls(f"file://{tmp_path}/a") == [as_uri]
    assert storage.exists(plain) and not storage.exists(str(tmp_path / "nope"))
    # atomic local writes leave no temp files behind
    assert sorted(os.listdir(tmp_path / "a")) == ["b.bin"]


def test_missing_local_file_names_the_uri(tmp_path):
    missing = str(tmp_path / "missing.json")
    with pytest.raises(storage.StorageNotFound, match="missing.json"):
        storage.read_json(missing)


def test_unsupported_scheme_is_a_clear_error():
    with pytest.raises(storage.StorageError, match="unsupported scheme 'gs'"):
        storage.read_bytes("gs://bucket/key")
    with pytest.raises(storage.StorageError, match="needs a bucket"):
        storage.split_uri("s3:///key")


@pytest.mark.integration
def test_s3_read_write_list_overwrite(s3_bucket):
    base = f"s3://{s3_bucket}/prefix"
    storage.write_text(f"{base}/one.txt", "1")
    storage.write_json(f"{base}/sub/two.json", {"k": [1, 2]})
    assert storage.read_text(f"{base}/one.txt") == "1"
    assert storage.read_json(f"{base}/sub/two.json") == {"k": [1, 2]}
    assert storage.ls(base) == [f"{base}/one.txt", f"{base}/sub"]
    assert storage.ls(base, recursive=True) == [f"{base}/one.txt", f"{base}/sub/two.json"]
    storage.write_text(f"{base}/one.txt", "overwritten")
    assert storage.read_text(f"{base}/one.txt") == "overwritten"
    assert storage.glob(f"{base}/*.txt") == [f"{base}/one.txt"]
    storage.remove(f"{base}/one.txt")
    assert not storage.exists(f"{base}/one.txt")


@pytest.mark.integration
def test_s3_multi_megabyte_object_and_streaming_copy(s3_bucket, tmp_path):
    payload = os.urandom(7 * 1024 * 1024 + 123)  # > s3fs's 5 MiB multipart block
    uri = f"s3://{s3_bucket}/big/blob.bin"
    with storage.open_uri(uri, "wb") as f:
        f.write(payload)
    assert storage.size(uri) == len(payload)
    assert storage.read_bytes(uri) == payload
    local = str(tmp_path / "copy.bin")
    storage.copy(uri, local, chunk_size=1 << 20)
    assert (tmp_path / "copy.bin").read_bytes() == payload
    storage.copy(local, f"s3://{s3_bucket}/big/back.bin")
    assert storage.read_bytes(f"s3://{s3_bucket}/big/back.bin") == payload


@pytest.mark.integration
def test_s3_missing_key_is_a_clear_error_without_secrets(s3_bucket):
    uri = f"s3://{s3_bucket}/no/such/key.json"
    with pytest.raises(storage.StorageNotFound) as info:
        storage.read_bytes(uri)
    message = str(info.value)
    assert uri in message
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in message
    with pytest.raises(storage.StorageNotFound, match="no-such-bucket"):
        storage.ls("s3://no-such-bucket-xyz/any")


@pytest.mark.integration
def test_pyarrow_filesystem_reads_what_s3fs_wrote(s3_bucket):
    import pyarrow as pa
    import pyarrow.parquet as pq

    uri = f"s3://{s3_bucket}/tables/t.parquet"
    fs, path = storage.pyarrow_filesystem(uri)
    pq.write_table(pa.table({"x": [1, 2, 3]}), path, filesystem=fs)
    assert storage.exists(uri)
    assert pq.read_table(path, filesystem=fs).column("x").to_pylist() == [1, 2, 3]


def test_redact_removes_credentials(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SuperSecretValue123")
    text = "s3://AKIA:SuperSecretValue123@bucket/k?X-Amz-Signature=abc&x=1 failed with SuperSecretValue123"
    out = storage.redact(text)
    assert "SuperSecretValue123" not in out and "abc&" not in out
    assert "s3://***@bucket/k" in out


def test_explicit_credentials_do_not_leak_into_repr():
    opts = storage.S3Options(endpoint_url="http://127.0.0.1:1", access_key_id="AKIAEXAMPLE", secret_access_key="s3cr3t-value")
    assert "s3cr3t-value" not in repr(opts) and "AKIAEXAMPLE" not in repr(opts)


@pytest.mark.integration
def test_s3_listing_sees_changes_made_by_other_clients(s3_server, s3_bucket):
    # Ray Train (pyarrow) prunes checkpoints and MLflow writes artifacts from other processes:
    # a listing cached by this process must not hide their changes.
    base = f"s3://{s3_bucket}/runs"
    storage.write_text(f"{base}/a/x.txt", "1")
    storage.write_text(f"{base}/b/x.txt", "2")
    assert storage.ls(base) == [f"{base}/a", f"{base}/b"]
    client = s3_server.client()
    client.delete_object(Bucket=s3_bucket, Key="runs/a/x.txt")
    client.put_object(Bucket=s3_bucket, Key="runs/c/x.txt", Body=b"3")
    assert storage.ls(base) == [f"{base}/b", f"{base}/c"]
    assert not storage.exists(f"{base}/a/x.txt")
