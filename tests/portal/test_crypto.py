"""Byte formats of the keyring (PORTAL-19/20): pure, no database, no Django."""

from __future__ import annotations

import base64
import copy
import hashlib
import io
import itertools
import pickle
import random
import struct
import tracemalloc
import typing
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from portal.crypto import (
    CHUNK_SIZE,
    FIELD_FORMAT,
    UNKNOWN_SIZE,
    CryptoError,
    DecryptionError,
    KeyDestroyed,
    MasterKey,
    SecretBytes,
    decrypt_field,
    decrypt_range,
    decrypt_stream,
    encrypt_field,
    encrypt_stream,
    field_version,
    key_fingerprint,
    master_key_id,
    new_data_key,
    parse_master_keys,
    plaintext_size,
    unwrap_key,
    wrap_key,
)

HEADER = 24
TAG = 16
SMALL = 16  # chunk size that makes multi-chunk files tiny and fast
AAD = b"tenant-1|employees|ssn|42"
MARKER = b"PLAINTEXT-MARKER-0123456789"


def _b64(raw: bytes, *, pad: bool = False) -> str:
    text = base64.urlsafe_b64encode(raw).decode()
    return text if pad else text.rstrip("=")


def _rng(seed: int) -> random.Random:
    """Seeded, reproducible test data; never used for keys or nonces."""
    return random.Random(seed)  # noqa: S311


def _master(seed: int = 1) -> MasterKey:
    raw = bytes([seed]) * 32
    return MasterKey(id=master_key_id(raw), key=SecretBytes(raw))


def _encrypt(
    data: bytes,
    key: SecretBytes,
    *,
    file_id: str = "file-1",
    chunk_size: int = SMALL,
) -> bytes:
    dst = io.BytesIO()
    written = encrypt_stream(
        key, io.BytesIO(data), dst, file_id=file_id, chunk_size=chunk_size
    )
    assert written == len(data)
    return dst.getvalue()


def _decrypt(blob: bytes, key: SecretBytes, *, file_id: str = "file-1") -> bytes:
    return b"".join(decrypt_stream(key, io.BytesIO(blob), file_id=file_id))


def _chunks(blob: bytes, chunk_size: int = SMALL) -> list[bytes]:
    body = blob[HEADER:]
    step = chunk_size + TAG
    return [body[i : i + step] for i in range(0, len(body), step)]


class _CountingReader(io.BytesIO):
    """BytesIO that counts the bytes handed out by read()."""

    bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.bytes_read += len(data)
        return data


class _TrickleReader(io.RawIOBase):
    """Non-seekable source that returns at most 5 bytes per read."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        limit = 5 if size is None or size < 0 else min(size, 5)
        return self._data.read(limit)


def _trickle(data: bytes) -> typing.BinaryIO:
    return typing.cast(typing.BinaryIO, _TrickleReader(data))


# Errors


def test_error_hierarchy() -> None:
    assert issubclass(DecryptionError, CryptoError)
    assert issubclass(KeyDestroyed, CryptoError)


# Master keys


def test_parse_master_keys_keeps_order_and_ids() -> None:
    first, second = b"\x01" * 32, b"\x02" * 32
    keys = parse_master_keys(f"{_b64(first)}, {_b64(second, pad=True)}")
    assert [k.id for k in keys] == [master_key_id(first), master_key_id(second)]
    assert keys[0].key.reveal() == first
    assert keys[1].key.reveal() == second


@pytest.mark.parametrize("pad", [True, False])
def test_parse_master_keys_padding_optional(pad: bool) -> None:
    raw = bytes(range(32))
    (key,) = parse_master_keys(_b64(raw, pad=pad))
    assert key.key.reveal() == raw


def test_parse_master_keys_accepts_urlsafe_alphabet() -> None:
    raw = b"\xfb\xff" * 16  # encodes to "-" and "_" characters
    text = _b64(raw)
    assert "-" in text or "_" in text
    assert parse_master_keys(text)[0].key.reveal() == raw


def test_master_key_id_is_sha256_prefix() -> None:
    raw = b"\x07" * 32
    assert master_key_id(raw) == hashlib.sha256(raw).hexdigest()[:16]
    assert len(master_key_id(raw)) == 16


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (_b64(b"\x01" * 16), "16 bytes"),
        (_b64(b"\x01" * 33), "33 bytes"),
        ("not base64!" + "A" * 32, "not base64url"),
        (base64.b64encode(b"\xfb\xff" * 16).decode(), "not base64url"),
        ("A" * 42 + "=A", "not base64url"),
        ("A" * 41, "not valid base64url"),
        ("A" * 43 + "===", "not base64url"),
        (_b64(b"\x01" * 32) + ",", "entry 2 is empty"),
        (_b64(b"\x01" * 32) + ",," + _b64(b"\x02" * 32), "entry 2 is empty"),
        ("A" * 42 + "=", "bad length or padding"),
    ],
)
def test_parse_master_keys_rejects(value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_master_keys(value)


def test_parse_master_keys_rejects_duplicates_and_hides_key() -> None:
    raw = b"\x05" * 32
    value = f"{_b64(raw)},{_b64(raw, pad=True)}"
    with pytest.raises(ValueError, match="entry 2 duplicates") as info:
        parse_master_keys(value)
    assert _b64(raw) not in str(info.value)


def test_parse_master_keys_error_does_not_echo_value() -> None:
    value = "secret-looking-but-short"
    with pytest.raises(ValueError, match="entry 1") as info:
        parse_master_keys(value)
    assert value not in str(info.value)


# Secrets


def test_secret_bytes_repr_hides_bytes() -> None:
    raw = bytes(range(32))
    secret = SecretBytes(raw)
    for text in (repr(secret), str(secret), f"{secret}"):
        assert text == f"<SecretBytes fingerprint={key_fingerprint(secret)}>"
        assert raw.hex() not in text
        assert repr(raw) not in text
    master = MasterKey(id=master_key_id(raw), key=secret)
    assert raw.hex() not in repr(master)
    assert repr(raw)[2:20] not in repr(master)
    assert master.id in repr(master)


def test_secret_bytes_equality() -> None:
    assert SecretBytes(b"a" * 32) == SecretBytes(b"a" * 32)
    assert SecretBytes(b"a" * 32) != SecretBytes(b"b" * 32)
    assert SecretBytes(b"a" * 32) != b"a" * 32
    assert hash(SecretBytes(b"a" * 32)) == hash(SecretBytes(b"a" * 32))


def test_secret_bytes_is_immutable_and_typed() -> None:
    secret = SecretBytes(b"a" * 32)
    with pytest.raises(AttributeError, match="immutable"):
        secret._value = b"b" * 32
    with pytest.raises(TypeError, match="holds bytes"):
        SecretBytes("text")  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_keys_refuse_pickling(protocol: int) -> None:
    secret = new_data_key()
    for value in (secret, _master(), [secret], {"k": _master()}):
        with pytest.raises(TypeError, match="keys refuse pickling"):
            pickle.dumps(value, protocol=protocol)
    with pytest.raises(TypeError, match="keys refuse pickling"):
        secret.__getstate__()


def test_keys_copy_to_themselves() -> None:
    secret, master = new_data_key(), _master()
    assert copy.copy(secret) is secret
    assert copy.deepcopy(secret) is secret
    assert copy.deepcopy(master) is master


def test_new_data_key_is_random_32_bytes() -> None:
    first, second = new_data_key(), new_data_key()
    assert len(first.reveal()) == 32
    assert first != second


def test_key_fingerprint() -> None:
    secret = SecretBytes(b"\x09" * 32)
    assert key_fingerprint(secret) == hashlib.sha256(b"\x09" * 32).hexdigest()[:16]


# Wrapped keys


def test_wrap_round_trip() -> None:
    master, key = _master(), new_data_key()
    wrapped = wrap_key(master, key, aad=b"t1|fields|3")
    assert len(wrapped) == 12 + 32 + 16
    assert key.reveal() not in wrapped
    assert unwrap_key(master, wrapped, aad=b"t1|fields|3") == key


def test_wrap_uses_fresh_nonce() -> None:
    master, key = _master(), new_data_key()
    assert wrap_key(master, key, aad=b"a") != wrap_key(master, key, aad=b"a")


def test_unwrap_wrong_aad_or_master_fails() -> None:
    master, key = _master(1), new_data_key()
    wrapped = wrap_key(master, key, aad=b"t1|fields|3")
    with pytest.raises(DecryptionError):
        unwrap_key(master, wrapped, aad=b"t1|fields|4")
    with pytest.raises(DecryptionError):
        unwrap_key(_master(2), wrapped, aad=b"t1|fields|3")


def test_unwrap_tamper_fails() -> None:
    master = _master()
    wrapped = wrap_key(master, new_data_key(), aad=b"x")
    for index in range(len(wrapped)):
        bad = bytearray(wrapped)
        bad[index] ^= 0x01
        with pytest.raises(DecryptionError):
            unwrap_key(master, bytes(bad), aad=b"x")
    for wrong in (b"", wrapped[:-1], wrapped + b"\x00"):
        with pytest.raises(DecryptionError, match="wrong length"):
            unwrap_key(master, wrong, aad=b"x")


def test_wrap_rejects_short_keys() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        wrap_key(_master(), SecretBytes(b"\x01" * 16), aad=b"")
    short_master = MasterKey(id="x", key=SecretBytes(b"\x01" * 16))
    with pytest.raises(ValueError, match="32 bytes"):
        wrap_key(short_master, new_data_key(), aad=b"")


# Fields


@pytest.mark.parametrize("plaintext", [b"", b"x", "Zoë 😀".encode(), MARKER * 400])
def test_field_round_trip(plaintext: bytes) -> None:
    key = new_data_key()
    blob = encrypt_field(key, 7, plaintext, aad=AAD)
    assert blob[0] == FIELD_FORMAT
    assert field_version(blob) == 7
    assert len(blob) == 1 + 4 + 12 + len(plaintext) + 16
    assert decrypt_field(key, blob, aad=AAD) == plaintext


def test_field_ciphertext_hides_plaintext() -> None:
    key = new_data_key()
    first = encrypt_field(key, 1, MARKER, aad=AAD)
    second = encrypt_field(key, 1, MARKER, aad=AAD)
    assert MARKER not in first
    assert MARKER[:8] not in first
    assert first != second  # fresh nonce each time


def test_field_wrong_aad_fails() -> None:
    key = new_data_key()
    blob = encrypt_field(key, 1, b"123-45-6789", aad=AAD)
    for other in (b"tenant-1|employees|ssn|43", b"tenant-2|employees|ssn|42", b""):
        with pytest.raises(DecryptionError):
            decrypt_field(key, blob, aad=other)


def test_field_wrong_key_fails() -> None:
    blob = encrypt_field(new_data_key(), 1, b"secret", aad=AAD)
    with pytest.raises(DecryptionError):
        decrypt_field(new_data_key(), blob, aad=AAD)


def test_field_bit_flip_anywhere_fails() -> None:
    # Covers format byte, version, nonce, ciphertext and tag.
    key = new_data_key()
    blob = encrypt_field(key, 3, b"secret value", aad=AAD)
    for index in range(len(blob)):
        for mask in (0x01, 0x80):
            bad = bytearray(blob)
            bad[index] ^= mask
            with pytest.raises(DecryptionError):
                decrypt_field(key, bytes(bad), aad=AAD)


def test_field_truncated_or_extended_fails() -> None:
    key = new_data_key()
    blob = encrypt_field(key, 3, b"secret value", aad=AAD)
    for cut in range(len(blob)):
        with pytest.raises(DecryptionError):
            decrypt_field(key, blob[:cut], aad=AAD)
    with pytest.raises(DecryptionError):
        decrypt_field(key, blob + b"\x00", aad=AAD)


def test_field_version_rejects_malformed() -> None:
    with pytest.raises(DecryptionError, match="too short"):
        field_version(b"")
    blob = encrypt_field(new_data_key(), 1, b"x", aad=AAD)
    with pytest.raises(DecryptionError, match="unknown"):
        field_version(b"\x02" + blob[1:])


@pytest.mark.parametrize("version", [-1, 2**32])
def test_field_version_out_of_range(version: int) -> None:
    with pytest.raises(ValueError, match="4 unsigned bytes"):
        encrypt_field(new_data_key(), version, b"x", aad=AAD)


def test_field_version_max() -> None:
    key = new_data_key()
    blob = encrypt_field(key, 2**32 - 1, b"x", aad=AAD)
    assert field_version(blob) == 2**32 - 1
    assert decrypt_field(key, blob, aad=AAD) == b"x"


# Files: round trips


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [
        (0, SMALL),
        (1, SMALL),
        (SMALL - 1, SMALL),
        (SMALL, SMALL),
        (SMALL + 1, SMALL),
        (5 * SMALL, SMALL),
        (5 * SMALL + 3, SMALL),
        (100, 1),
        (0, CHUNK_SIZE),
        (CHUNK_SIZE, CHUNK_SIZE),
        (CHUNK_SIZE + 1, CHUNK_SIZE),
    ],
)
def test_file_round_trip(size: int, chunk_size: int) -> None:
    key = new_data_key()
    data = _rng(size).randbytes(size)
    blob = _encrypt(data, key, chunk_size=chunk_size)
    chunks = max(1, -(-size // chunk_size))
    assert len(blob) == HEADER + size + chunks * TAG
    assert blob[:4] == b"PDEF"
    assert plaintext_size(io.BytesIO(blob)) == size
    parts = list(decrypt_stream(key, io.BytesIO(blob), file_id="file-1"))
    assert len(parts) == chunks
    assert b"".join(parts) == data


def test_empty_file_is_one_empty_last_chunk() -> None:
    key = new_data_key()
    blob = _encrypt(b"", key)
    assert len(blob) == HEADER + TAG
    assert list(decrypt_stream(key, io.BytesIO(blob), file_id="file-1")) == [b""]
    with pytest.raises(DecryptionError, match="truncated"):
        _decrypt(blob[:HEADER], key)


def test_multi_mib_file_round_trip() -> None:
    key = new_data_key()
    data = _rng(3).randbytes(3 * 1024 * 1024 + 123)
    blob = _encrypt(data, key, chunk_size=64 * 1024)
    assert _decrypt(blob, key) == data


def test_file_ciphertext_hides_plaintext() -> None:
    key = new_data_key()
    data = MARKER * 1000
    blob = _encrypt(data, key, chunk_size=4096)
    assert MARKER not in blob
    assert MARKER[:8] not in blob


def test_encrypt_from_short_reads_with_explicit_size() -> None:
    key = new_data_key()
    data = _rng(5).randbytes(1000)
    dst = io.BytesIO()
    source = _trickle(data)
    size = encrypt_stream(key, source, dst, file_id="f", chunk_size=64, size=len(data))
    assert size == len(data)
    parts = decrypt_stream(key, _trickle(dst.getvalue()), file_id="f")
    assert b"".join(parts) == data


def test_encrypt_starts_at_source_position() -> None:
    key = new_data_key()
    src = io.BytesIO(b"skip:payload")
    src.seek(5)
    dst = io.BytesIO()
    assert encrypt_stream(key, src, dst, file_id="f") == len(b"payload")
    assert _decrypt(dst.getvalue(), key, file_id="f") == b"payload"


def test_encrypt_rejects_bad_arguments() -> None:
    key = new_data_key()
    with pytest.raises(ValueError, match="chunk_size"):
        encrypt_stream(key, io.BytesIO(b"x"), io.BytesIO(), file_id="f", chunk_size=0)
    with pytest.raises(ValueError, match="file_id"):
        encrypt_stream(key, io.BytesIO(b"x"), io.BytesIO(), file_id="")
    with pytest.raises(ValueError, match="32 bytes"):
        encrypt_stream(SecretBytes(b"k" * 16), io.BytesIO(), io.BytesIO(), file_id="f")
    with pytest.raises(ValueError, match="pass size="):
        encrypt_stream(key, _trickle(b"x"), io.BytesIO(), file_id="f")


@pytest.mark.parametrize(("size", "message"), [(10, "longer"), (12, "ended")])
def test_encrypt_rejects_wrong_size(size: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encrypt_stream(
            new_data_key(),
            io.BytesIO(b"x" * 11),
            io.BytesIO(),
            file_id="f",
            size=size,
        )


def test_plaintext_size_restores_position_and_checks_header() -> None:
    blob = _encrypt(b"x" * 40, new_data_key())
    src = io.BytesIO(blob)
    assert plaintext_size(src) == 40
    assert src.tell() == 0
    with pytest.raises(DecryptionError, match="not an encrypted"):
        plaintext_size(io.BytesIO(b"XXXX" + blob[4:]))
    with pytest.raises(DecryptionError, match="no header"):
        plaintext_size(io.BytesIO(blob[:10]))


# Files: tampering


def test_file_wrong_key_or_file_id_fails() -> None:
    key = new_data_key()
    blob = _encrypt(b"hello world" * 5, key)
    with pytest.raises(DecryptionError):
        _decrypt(blob, new_data_key())
    with pytest.raises(DecryptionError):
        _decrypt(blob, key, file_id="file-2")


def test_file_bit_flip_anywhere_fails() -> None:
    # Every byte of the header (magic, format, chunk size, size, nonce
    # prefix), of each chunk body and of each tag.
    key = new_data_key()
    blob = _encrypt(_rng(7).randbytes(2 * SMALL + 5), key)
    for index in range(len(blob)):
        for mask in (0x01, 0x80):
            bad = bytearray(blob)
            bad[index] ^= mask
            with pytest.raises(DecryptionError):
                _decrypt(bytes(bad), key)


def test_file_every_truncation_fails() -> None:
    # Includes dropping the last chunk and cutting inside any chunk.
    key = new_data_key()
    blob = _encrypt(_rng(8).randbytes(3 * SMALL), key)
    for cut in range(len(blob)):
        with pytest.raises(DecryptionError):
            _decrypt(blob[:cut], key)


def test_file_dropped_last_chunk_fails() -> None:
    key = new_data_key()
    blob = _encrypt(b"a" * (3 * SMALL), key)
    with pytest.raises(DecryptionError, match="truncated"):
        _decrypt(blob[: -(SMALL + TAG)], key)


def test_file_reordered_chunks_fail() -> None:
    key = new_data_key()
    blob = _encrypt(_rng(9).randbytes(3 * SMALL), key)
    first, second, third = _chunks(blob)
    for order in ([second, first, third], [first, third, second]):
        with pytest.raises(DecryptionError):
            _decrypt(blob[:HEADER] + b"".join(order), key)


def test_file_chunk_swapped_from_other_file_fails() -> None:
    key = new_data_key()
    data_a, data_b = b"A" * (3 * SMALL), b"B" * (3 * SMALL)
    blob_a = _encrypt(data_a, key, file_id="file-a")
    blob_b = _encrypt(data_b, key, file_id="file-b")
    chunks_a, chunks_b = _chunks(blob_a), _chunks(blob_b)
    for index in range(3):
        mixed = list(chunks_a)
        mixed[index] = chunks_b[index]
        with pytest.raises(DecryptionError):
            _decrypt(blob_a[:HEADER] + b"".join(mixed), key, file_id="file-a")
    # The other file's header does not help either.
    with pytest.raises(DecryptionError):
        _decrypt(blob_b[:HEADER] + blob_a[HEADER:], key, file_id="file-a")
    with pytest.raises(DecryptionError):
        _decrypt(blob_b, key, file_id="file-a")


@pytest.mark.parametrize("extra", [b"\x00", b"garbage" * 10, "last chunk"])
def test_file_appended_data_fails(extra: bytes | str) -> None:
    key = new_data_key()
    blob = _encrypt(b"z" * (2 * SMALL), key)
    tail = _chunks(blob)[-1] if extra == "last chunk" else extra
    assert isinstance(tail, bytes)
    with pytest.raises(DecryptionError, match="trailing"):
        _decrypt(blob + tail, key)


def test_file_last_chunk_is_verified_before_release() -> None:
    key = new_data_key()
    blob = _encrypt(b"q" * SMALL, key)
    stream = decrypt_stream(key, io.BytesIO(blob + b"!"), file_id="file-1")
    with pytest.raises(DecryptionError, match="trailing"):
        next(stream)


def test_file_header_edits_fail() -> None:
    key = new_data_key()
    data = b"h" * (4 * SMALL)
    blob = _encrypt(data, key)
    magic, fmt, chunk_size, size, prefix = struct.unpack(">4sBIQ7s", blob[:HEADER])
    for header in (
        struct.pack(">4sBIQ7s", magic, fmt, chunk_size * 2, size, prefix),
        struct.pack(">4sBIQ7s", magic, fmt, chunk_size, size - SMALL, prefix),
        struct.pack(">4sBIQ7s", magic, fmt, chunk_size, size + 1, prefix),
        struct.pack(">4sBIQ7s", magic, 2, chunk_size, size, prefix),
        struct.pack(">4sBIQ7s", magic, fmt, 0, size, prefix),
        struct.pack(">4sBIQ7s", magic, fmt, 2**31, size, prefix),
    ):
        with pytest.raises(DecryptionError):
            _decrypt(header + blob[HEADER:], key)


# Files: ranges


def _range(blob: bytes, key: SecretBytes, start: int, end: int) -> bytes:
    parts = decrypt_range(key, io.BytesIO(blob), start, end, file_id="file-1")
    return b"".join(parts)


def test_random_ranges_match_plaintext() -> None:
    rng = _rng(20240519)
    key = new_data_key()
    data = rng.randbytes(1000)
    blob = _encrypt(data, key, chunk_size=64)
    cases = [(0, 0), (0, 1000), (1000, 1000), (63, 65), (64, 128), (999, 1000)]
    for _ in range(300):
        start = rng.randrange(0, 1001)
        cases.append((start, rng.randrange(start, 1001)))
    for start, end in cases:
        assert _range(blob, key, start, end) == data[start:end], (start, end)


def test_range_of_empty_file() -> None:
    key = new_data_key()
    assert _range(_encrypt(b"", key), key, 0, 0) == b""


@pytest.mark.parametrize(("start", "end"), [(-1, 5), (5, 4), (0, 101), (101, 101)])
def test_range_bounds_checked(start: int, end: int) -> None:
    key = new_data_key()
    blob = _encrypt(b"r" * 100, key)
    with pytest.raises(ValueError, match="outside the file"):
        decrypt_range(key, io.BytesIO(blob), start, end, file_id="file-1")


def test_range_reads_only_needed_chunks() -> None:
    key = new_data_key()
    chunk_size = 1024
    data = _rng(11).randbytes(64 * chunk_size)
    blob = _encrypt(data, key, chunk_size=chunk_size)
    sealed = chunk_size + TAG
    # (start, end, chunks touched)
    for start, end, touched in [
        (10, 20, 1),
        (chunk_size - 1, chunk_size + 1, 2),
        (30 * chunk_size, 31 * chunk_size, 1),
        (len(data) - 5, len(data), 1),
    ]:
        src = _CountingReader(blob)
        parts = decrypt_range(key, src, start, end, file_id="file-1")
        assert b"".join(parts) == data[start:end]
        # Header, the touched chunks, and one byte of trailing-data check.
        assert src.bytes_read <= HEADER + touched * sealed + 1


def test_range_detects_tampered_chunk_and_header() -> None:
    key = new_data_key()
    blob = _encrypt(b"t" * (4 * SMALL), key)
    bad = bytearray(blob)
    bad[HEADER + SMALL + TAG + 3] ^= 0x01  # inside chunk 1
    with pytest.raises(DecryptionError):
        _range(bytes(bad), key, SMALL, SMALL + 1)
    bad = bytearray(blob)
    bad[HEADER - 1] ^= 0x01  # nonce prefix
    with pytest.raises(DecryptionError):
        _range(bytes(bad), key, 0, 1)
    with pytest.raises(DecryptionError):
        next(decrypt_range(key, io.BytesIO(blob), 0, 1, file_id="other"))


def test_range_detects_truncation_and_trailing_data() -> None:
    key = new_data_key()
    blob = _encrypt(b"t" * (4 * SMALL), key)
    with pytest.raises(DecryptionError, match="truncated"):
        _range(blob[:-1], key, 3 * SMALL, 4 * SMALL)
    with pytest.raises(DecryptionError, match="trailing"):
        _range(blob + b"x", key, 3 * SMALL, 4 * SMALL)


def test_range_starts_at_source_position() -> None:
    key = new_data_key()
    data = b"0123456789" * 10
    src = io.BytesIO(b"prefix" + _encrypt(data, key))
    src.seek(6)
    parts = decrypt_range(key, src, 15, 45, file_id="file-1")
    assert b"".join(parts) == data[15:45]


# Memory


def _consume(chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def test_stream_memory_is_flat(tmp_path: Path) -> None:
    # 32 MiB through 1 MiB chunks; a buffering implementation would peak
    # at 32 MiB or more.
    key = new_data_key()
    size = 32 * 1024 * 1024
    src = io.BytesIO(bytes(size))
    expected = hashlib.sha256(src.getbuffer()).hexdigest()
    path = tmp_path / "blob.enc"
    limit = 8 * 1024 * 1024
    with path.open("wb") as dst:
        tracemalloc.start()
        try:
            encrypt_stream(key, src, dst, file_id="big")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < limit
    with path.open("rb") as encrypted:
        tracemalloc.start()
        try:
            digest = _consume(decrypt_stream(key, encrypted, file_id="big"))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < limit
    assert digest == expected


# Files: unknown size (written from a generator)


class _GeneratorReader(io.RawIOBase):
    """Non-seekable source fed by a generator, like a CSV export from a cursor.

    A read returns at most what is left of the current piece, so reads come
    back short at irregular points; empty pieces are skipped, not taken as
    the end.
    """

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self._pieces = iter(pieces)
        self._current = b""

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        while not self._current:
            piece = next(self._pieces, None)
            if piece is None:
                return b""
            self._current = piece
        if size is None or size < 0:
            size = len(self._current)
        data, self._current = self._current[:size], self._current[size:]
        return data


def _rows(data: bytes, seed: int) -> Iterator[bytes]:
    rng = _rng(seed)
    position = 0
    while position < len(data):
        step = rng.randint(0, 2 * SMALL)
        yield data[position : position + step]
        position += step


def _generated(data: bytes) -> typing.BinaryIO:
    return typing.cast(typing.BinaryIO, _GeneratorReader(_rows(data, len(data))))


def _encrypt_unsized(
    data: bytes,
    key: SecretBytes,
    *,
    file_id: str = "file-1",
    chunk_size: int = SMALL,
) -> bytes:
    dst = io.BytesIO()
    written = encrypt_stream(
        key,
        _generated(data),
        dst,
        file_id=file_id,
        chunk_size=chunk_size,
        size=UNKNOWN_SIZE,
    )
    assert written == len(data)
    return dst.getvalue()


def _with_size(blob: bytes, size: int) -> bytes:
    magic, fmt, chunk_size, _, prefix = struct.unpack(">4sBIQ7s", blob[:HEADER])
    header = struct.pack(">4sBIQ7s", magic, fmt, chunk_size, size, prefix)
    return header + blob[HEADER:]


def _fails_everywhere(blob: bytes, key: SecretBytes) -> None:
    """Streaming, seekable or not, and a full-range read all refuse `blob`."""
    with pytest.raises(DecryptionError):
        _decrypt(blob, key)
    with pytest.raises(DecryptionError):
        b"".join(decrypt_stream(key, _trickle(blob), file_id="file-1"))
    try:
        end = plaintext_size(io.BytesIO(blob))
    except DecryptionError:
        return
    if end:  # an empty range reads no chunk, sized file or not
        with pytest.raises(DecryptionError):
            _range(blob, key, 0, end)


@pytest.mark.parametrize(
    ("size", "chunk_size"),
    [
        (0, SMALL),
        (1, SMALL),
        (SMALL - 1, SMALL),
        (SMALL, SMALL),
        (SMALL + 1, SMALL),
        (5 * SMALL, SMALL),
        (5 * SMALL + 3, SMALL),
        (100, 1),
        (CHUNK_SIZE + 1, CHUNK_SIZE),
    ],
)
def test_unsized_round_trip(size: int, chunk_size: int) -> None:
    key = new_data_key()
    data = _rng(size).randbytes(size)
    blob = _encrypt_unsized(data, key, chunk_size=chunk_size)
    chunks = max(1, -(-size // chunk_size))
    # Same length as a sized file: no extra empty chunk at the end.
    assert len(blob) == HEADER + size + chunks * TAG
    assert struct.unpack(">4sBIQ7s", blob[:HEADER])[3] == UNKNOWN_SIZE
    parts = list(decrypt_stream(key, _trickle(blob), file_id="file-1"))
    assert b"".join(parts) == data
    assert [len(part) for part in parts[:-1]] == [chunk_size] * (chunks - 1)
    assert 0 < len(parts[-1]) <= chunk_size or size == 0
    assert _decrypt(blob, key) == data
    assert plaintext_size(io.BytesIO(blob)) == size
    assert _range(blob, key, 0, size) == data


def test_unsized_format_matches_the_spec() -> None:
    # Built by hand from the documented format, independently of the module:
    # nonce prefix || index || last flag, associated data header || file id.
    key = new_data_key()
    data = _rng(12).randbytes(2 * SMALL + 5)
    blob = _encrypt_unsized(data, key)
    aead, aad = AESGCM(key.reveal()), blob[:HEADER] + b"file-1"
    prefix = blob[HEADER - 7 : HEADER]
    chunks = _chunks(blob)
    opened = [
        aead.decrypt(prefix + struct.pack(">IB", i, i == len(chunks) - 1), c, aad)
        for i, c in enumerate(chunks)
    ]
    assert b"".join(opened) == data
    header = struct.pack(">4sBIQ7s", b"PDEF", 1, SMALL, UNKNOWN_SIZE, prefix)
    built = header + b"".join(
        aead.encrypt(
            prefix + struct.pack(">IB", i, i == 2), data[i * SMALL :][:SMALL], aad
        )
        for i in range(3)
    )
    assert _decrypt(built, key) == data


def test_unsized_empty_source_is_one_empty_last_chunk() -> None:
    key = new_data_key()
    blob = _encrypt_unsized(b"", key)
    assert len(blob) == HEADER + TAG
    assert list(decrypt_stream(key, _trickle(blob), file_id="file-1")) == [b""]
    assert plaintext_size(io.BytesIO(blob)) == 0
    with pytest.raises(DecryptionError, match="truncated"):
        _decrypt(blob[:HEADER], key)


def test_unsized_from_seekable_source_and_position() -> None:
    key = new_data_key()
    src = io.BytesIO(b"skip:payload")
    src.seek(5)
    dst = io.BytesIO()
    size = encrypt_stream(key, src, dst, file_id="f", size=UNKNOWN_SIZE)
    assert size == len(b"payload")
    assert _decrypt(dst.getvalue(), key, file_id="f") == b"payload"


def test_unsized_is_opt_in() -> None:
    # An unseekable source without size= still fails loudly rather than
    # silently producing a file whose header carries no size.
    with pytest.raises(ValueError, match="pass size=.*UNKNOWN_SIZE"):
        encrypt_stream(new_data_key(), _trickle(b"x"), io.BytesIO(), file_id="f")
    with pytest.raises(ValueError, match="too many chunks"):
        encrypt_stream(
            new_data_key(),
            _trickle(b"x"),
            io.BytesIO(),
            file_id="f",
            size=UNKNOWN_SIZE - 1,
        )


@pytest.mark.parametrize("size", [0, 1, SMALL, 3 * SMALL, 3 * SMALL + 5])
def test_unsized_every_truncation_fails(size: int) -> None:
    key = new_data_key()
    blob = _encrypt_unsized(_rng(size).randbytes(size), key)
    for cut in range(len(blob)):
        _fails_everywhere(blob[:cut], key)


def test_unsized_cut_at_chunk_boundary_is_reported_as_truncation() -> None:
    # The remaining chunks are intact; only the missing last flag betrays
    # the cut.
    key = new_data_key()
    blob = _encrypt_unsized(b"c" * (4 * SMALL), key)
    for chunks in range(4):
        with pytest.raises(DecryptionError, match="truncated"):
            _decrypt(blob[: HEADER + chunks * (SMALL + TAG)], key)


@pytest.mark.parametrize("size", [3 * SMALL, 3 * SMALL + 5])
def test_unsized_reordered_or_replayed_chunks_fail(size: int) -> None:
    key = new_data_key()
    blob = _encrypt_unsized(_rng(size).randbytes(size), key)
    chunks = _chunks(blob)
    orders = list(itertools.permutations(chunks))[1:]
    orders += [(chunks[0], chunks[0], *chunks[2:]), (*chunks[:-1], chunks[0])]
    for order in orders:
        _fails_everywhere(blob[:HEADER] + b"".join(order), key)


@pytest.mark.parametrize("size", [2 * SMALL, 2 * SMALL + 3])
@pytest.mark.parametrize(
    "extra", [b"\x00", b"garbage" * 10, "first chunk", "last chunk"]
)
def test_unsized_appended_data_fails(size: int, extra: bytes | str) -> None:
    key = new_data_key()
    blob = _encrypt_unsized(b"z" * size, key)
    chunks = _chunks(blob)
    if isinstance(extra, bytes):
        tail = extra
    else:
        tail = chunks[0] if extra == "first chunk" else chunks[-1]
    _fails_everywhere(blob + tail, key)
    if size % SMALL == 0:
        # A full last chunk followed by anything is named for what it is.
        with pytest.raises(DecryptionError, match="trailing"):
            _decrypt(blob + tail, key)


@pytest.mark.parametrize("size", [SMALL, SMALL - 1])
def test_unsized_last_chunk_is_verified_before_release(size: int) -> None:
    key = new_data_key()
    blob = _encrypt_unsized(b"q" * size, key)
    stream = decrypt_stream(key, io.BytesIO(blob + b"!"), file_id="file-1")
    with pytest.raises(DecryptionError):
        next(stream)


def test_unsized_bit_flip_anywhere_fails() -> None:
    key = new_data_key()
    blob = _encrypt_unsized(_rng(13).randbytes(2 * SMALL + 5), key)
    for index in range(len(blob)):
        for mask in (0x01, 0x80):
            bad = bytearray(blob)
            bad[index] ^= mask
            _fails_everywhere(bytes(bad), key)


def test_unsized_header_size_is_authenticated() -> None:
    key = new_data_key()
    size = 4 * SMALL + 3
    data = _rng(14).randbytes(size)
    unsized = _encrypt_unsized(data, key)
    # With the real size written in, the layout and nonces are exactly those
    # of a sized file: only the authenticated header tells them apart.
    with pytest.raises(DecryptionError, match="authentication"):
        _decrypt(_with_size(unsized, size), key)
    with pytest.raises(DecryptionError, match="authentication"):
        _range(_with_size(unsized, size), key, 0, 1)
    for fake in (0, 1, SMALL, size - 1, size + 1, UNKNOWN_SIZE - 1):
        _fails_everywhere(_with_size(unsized, fake), key)
    # And the other way round: a sized file cannot be turned unsized.
    sized = _encrypt(data, key)
    assert sized[HEADER:] != unsized[HEADER:]
    with pytest.raises(DecryptionError, match="authentication"):
        _decrypt(_with_size(sized, UNKNOWN_SIZE), key)
    with pytest.raises(DecryptionError, match="authentication"):
        _range(_with_size(sized, UNKNOWN_SIZE), key, 0, size)


def test_unsized_wrong_key_file_id_or_foreign_chunk_fails() -> None:
    key = new_data_key()
    data = _rng(15).randbytes(3 * SMALL)
    blob = _encrypt_unsized(data, key)
    with pytest.raises(DecryptionError):
        _decrypt(blob, new_data_key())
    with pytest.raises(DecryptionError):
        _decrypt(blob, key, file_id="file-2")
    for other in (_encrypt_unsized(data, key), _encrypt(data, key)):
        for index in range(3):
            mixed = _chunks(blob)
            mixed[index] = _chunks(other)[index]
            _fails_everywhere(blob[:HEADER] + b"".join(mixed), key)


def test_unsized_empty_chunk_after_full_chunks_is_rejected() -> None:
    # The writer never emits this layout (it looks ahead instead), so even
    # correctly sealed it is refused: one plaintext, one layout.
    key = new_data_key()
    prefix = b"\x07" * 7
    header = struct.pack(">4sBIQ7s", b"PDEF", 1, SMALL, UNKNOWN_SIZE, prefix)
    aead, aad = AESGCM(key.reveal()), header + b"file-1"
    blob = (
        header
        + aead.encrypt(prefix + struct.pack(">IB", 0, False), b"e" * SMALL, aad)
        + aead.encrypt(prefix + struct.pack(">IB", 1, True), b"", aad)
    )
    with pytest.raises(DecryptionError, match="truncated"):
        _decrypt(blob, key)
    with pytest.raises(DecryptionError, match="truncated"):
        plaintext_size(io.BytesIO(blob))


def test_unsized_plaintext_size() -> None:
    key = new_data_key()
    blob = _encrypt_unsized(b"s" * (3 * SMALL + 2), key)
    src = io.BytesIO(b"prefix" + blob)
    src.seek(6)
    assert plaintext_size(src) == 3 * SMALL + 2
    assert src.tell() == 6
    with pytest.raises(ValueError, match="size not recorded"):
        plaintext_size(_trickle(blob))
    with pytest.raises(DecryptionError, match="truncated"):
        plaintext_size(io.BytesIO(blob[: HEADER + SMALL + TAG + 5]))


def test_unsized_ranges() -> None:
    rng = _rng(20240520)
    key = new_data_key()
    data = rng.randbytes(1000)
    blob = _encrypt_unsized(data, key, chunk_size=64)
    cases = [(0, 0), (0, 1000), (1000, 1000), (63, 65), (64, 128), (999, 1000)]
    for _ in range(300):
        start = rng.randrange(0, 1001)
        cases.append((start, rng.randrange(start, 1001)))
    for start, end in cases:
        assert _range(blob, key, start, end) == data[start:end], (start, end)
    with pytest.raises(ValueError, match="outside the file"):
        decrypt_range(key, io.BytesIO(blob), 0, 1001, file_id="file-1")
    src = io.BytesIO(b"prefix" + blob)
    src.seek(6)
    assert b"".join(decrypt_range(key, src, 15, 450, file_id="file-1")) == data[15:450]


def test_unsized_range_reads_only_needed_chunks() -> None:
    key = new_data_key()
    chunk_size = 1024
    data = _rng(16).randbytes(64 * chunk_size)
    blob = _encrypt_unsized(data, key, chunk_size=chunk_size)
    sealed = chunk_size + TAG
    for start, end, touched in [(10, 20, 1), (len(data) - 5, len(data), 1)]:
        src = _CountingReader(blob)
        parts = decrypt_range(key, src, start, end, file_id="file-1")
        assert b"".join(parts) == data[start:end]
        # Measuring the size seeks to the end; it reads nothing.
        assert src.bytes_read <= HEADER + touched * sealed + 1


def test_unsized_chunk_counter_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    key = new_data_key()
    four_chunks = _encrypt_unsized(b"m" * (4 * SMALL), key)
    monkeypatch.setattr("portal.crypto._MAX_CHUNKS", 3)
    assert _decrypt(_encrypt_unsized(b"m" * (3 * SMALL), key), key)
    with pytest.raises(ValueError, match="too many chunks"):
        _encrypt_unsized(b"m" * (3 * SMALL + 1), key)
    with pytest.raises(DecryptionError, match="too many chunks"):
        _decrypt(four_chunks, key)
    with pytest.raises(DecryptionError, match="too many chunks"):
        plaintext_size(io.BytesIO(four_chunks))


def test_unsized_memory_is_flat(tmp_path: Path) -> None:
    # 32 MiB generated in 64 KiB rows through 1 MiB chunks, never seekable;
    # a buffering implementation would peak at 32 MiB or more.
    key = new_data_key()
    rows, row = 512, 64 * 1024
    expected = hashlib.sha256(bytes(rows * row)).hexdigest()
    path = tmp_path / "export.enc"
    limit = 8 * 1024 * 1024
    source = typing.cast(
        typing.BinaryIO, _GeneratorReader(bytes(row) for _ in range(rows))
    )
    with path.open("wb") as dst:
        tracemalloc.start()
        try:
            size = encrypt_stream(key, source, dst, file_id="big", size=UNKNOWN_SIZE)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < limit
    assert size == rows * row
    with path.open("rb") as encrypted:
        assert plaintext_size(encrypted) == size
        tracemalloc.start()
        try:
            digest = _consume(decrypt_stream(key, encrypted, file_id="big"))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < limit
    assert digest == expected
