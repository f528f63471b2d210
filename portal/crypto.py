"""Byte formats of the portal keyring: master keys, data keys, fields, files.

PORTAL-19/20. Pure functions over bytes and binary streams: no database and
no Django import, so the formats can be tested and audited on their own. The
keyring service decides which key to use; this module only defines how bytes
are sealed and opened.

Formats (all integers big-endian):

* Master keys: ``PORTAL_MASTER_KEY`` holds base64url (padding optional)
  32-byte keys, comma-separated, newest first. The first wraps, all unwrap.
  A key's id is the hex of the first 8 bytes of its SHA-256.
* Wrapped data key: ``nonce(12) || AES-256-GCM(key) || tag(16)``, with
  associated data chosen by the caller (tenant, purpose, version).
* Field: ``format(1) || key version(4) || nonce(12) || ciphertext || tag(16)``.
  The first five bytes and the caller's associated data
  (``tenant_id|table|column|pk``) are both authenticated.
* File: a 24-byte header ``b"PDEF" || format(1) || chunk size(4) ||
  plaintext size(8) || nonce prefix(7)`` followed by one sealed chunk per
  ``chunk size`` bytes of plaintext (a single empty chunk for an empty file).
  Chunk ``i`` uses nonce ``prefix || i(4) || last(1)`` and associated data
  ``header || file id``, so moving, reordering, truncating, extending or
  swapping chunks between files, and editing the header, all fail to verify.
  A file written without knowing its size records `UNKNOWN_SIZE` (2**64 - 1)
  as its plaintext size; its chunks are laid out and sealed exactly as for a
  sized file of the same plaintext, so the flagged last chunk marks the end.

Every authentication failure raises `DecryptionError`; no partial plaintext
of a failing field or chunk is ever returned.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
import typing
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "CHUNK_SIZE",
    "FIELD_FORMAT",
    "FILE_FORMAT",
    "KEY_SIZE",
    "UNKNOWN_SIZE",
    "CryptoError",
    "DecryptionError",
    "KeyDestroyed",
    "MasterKey",
    "SecretBytes",
    "decrypt_field",
    "decrypt_range",
    "decrypt_stream",
    "encrypt_field",
    "encrypt_stream",
    "field_version",
    "key_fingerprint",
    "master_key_id",
    "new_data_key",
    "parse_master_keys",
    "plaintext_size",
    "unwrap_key",
    "wrap_key",
]

KEY_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16

FIELD_FORMAT = 1
# format byte, key version
_FIELD_HEADER = struct.Struct(">BI")
_FIELD_MIN_SIZE = _FIELD_HEADER.size + NONCE_SIZE + TAG_SIZE

CHUNK_SIZE = 1024 * 1024
# A tampered header must not make a reader allocate without bound before the
# first chunk has authenticated it.
MAX_CHUNK_SIZE = 64 * 1024 * 1024
FILE_MAGIC = b"PDEF"
FILE_FORMAT = 1
_PREFIX_SIZE = 7
# magic, format, chunk size, plaintext size, nonce prefix
_FILE_HEADER = struct.Struct(">4sBIQ7s")
FILE_HEADER_SIZE = _FILE_HEADER.size
# The chunk counter is four bytes wide.
_MAX_CHUNKS = 2**32
# Header size of a file whose size was not known when it was written. No
# sized file can record it (2**64 - 1 bytes would need more than 2**32
# chunks even at MAX_CHUNK_SIZE), so it cannot be mistaken for a real size,
# and readers that predate it reject such files instead of misreading them.
UNKNOWN_SIZE = 2**64 - 1

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


class CryptoError(Exception):
    """Base class of every error this module raises on purpose."""


class DecryptionError(CryptoError):
    """Ciphertext or wrapped key failed to parse or to authenticate."""


class KeyDestroyed(CryptoError):
    """The key needed for this ciphertext was shredded (raised by callers)."""


def _fingerprint(raw: bytes) -> str:
    return hashlib.sha256(raw).digest()[:8].hex()


class SecretBytes:
    """Key material that will not leak through repr, str, logs or pickles.

    `reveal()` is the only way to the bytes, so every use is greppable.
    Equality is constant-time. Copying returns the same (immutable) object;
    pickling raises `TypeError`, so keys cannot end up in caches, task
    queues or session stores by accident. Python cannot reliably wipe
    memory, so this is about not leaking keys, not about zeroing them.
    """

    __slots__ = ("_value",)
    _value: bytes

    def __init__(self, value: bytes) -> None:
        if not isinstance(value, bytes):
            raise TypeError("SecretBytes holds bytes")
        object.__setattr__(self, "_value", value)

    def reveal(self) -> bytes:
        """Return the raw bytes; keep them out of logs and long-lived state."""
        return self._value

    @property
    def fingerprint(self) -> str:
        """Hex of the first 8 bytes of SHA-256: safe to log and store."""
        return _fingerprint(self._value)

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return f"<SecretBytes fingerprint={self.fingerprint}>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretBytes):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        # Hash the fingerprint so the hash reveals no more than repr does.
        return hash(self.fingerprint)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("SecretBytes is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("SecretBytes is immutable")

    def __copy__(self) -> SecretBytes:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> SecretBytes:
        return self

    def __reduce__(self) -> typing.NoReturn:
        raise TypeError("keys refuse pickling")

    def __reduce_ex__(self, protocol: typing.SupportsIndex) -> typing.NoReturn:
        raise TypeError("keys refuse pickling")

    def __getstate__(self) -> typing.NoReturn:
        raise TypeError("keys refuse pickling")


@dataclass(frozen=True, repr=False)
class MasterKey:
    """One entry of ``PORTAL_MASTER_KEY``: its public id and its secret."""

    id: str
    key: SecretBytes

    def __repr__(self) -> str:
        return f"<MasterKey id={self.id}>"

    __str__ = __repr__

    def __copy__(self) -> MasterKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> MasterKey:
        return self

    def __reduce__(self) -> typing.NoReturn:
        raise TypeError("keys refuse pickling")

    def __reduce_ex__(self, protocol: typing.SupportsIndex) -> typing.NoReturn:
        raise TypeError("keys refuse pickling")

    def __getstate__(self) -> typing.NoReturn:
        raise TypeError("keys refuse pickling")


def master_key_id(raw: bytes) -> str:
    """Return the id of a master key: hex of the first 8 bytes of SHA-256."""
    return _fingerprint(raw)


def key_fingerprint(key: SecretBytes) -> str:
    """Return the public fingerprint of a key (same rule as `master_key_id`)."""
    return _fingerprint(key.reveal())


def parse_master_keys(value: str) -> list[MasterKey]:
    """Parse ``PORTAL_MASTER_KEY`` into keys, newest (the wrapping key) first.

    Entries are base64url with optional padding, separated by commas;
    whitespace around entries is ignored. Raises `ValueError` naming the
    entry's position, never its content, if the value is empty or an entry
    is empty, not base64url, not 32 bytes, or a duplicate.
    """
    if not value.strip():
        raise ValueError("PORTAL_MASTER_KEY is empty; it needs at least one key")
    keys: list[MasterKey] = []
    seen: set[str] = set()
    for position, entry in enumerate(value.split(","), start=1):
        text = entry.strip()
        where = f"PORTAL_MASTER_KEY entry {position}"
        if not text:
            raise ValueError(f"{where} is empty (stray comma?)")
        raw = _decode_base64url(text, where)
        if len(raw) != KEY_SIZE:
            raise ValueError(
                f"{where} decodes to {len(raw)} bytes; keys must be {KEY_SIZE}"
            )
        key_id = master_key_id(raw)
        if key_id in seen:
            raise ValueError(f"{where} duplicates an earlier key (id {key_id})")
        seen.add(key_id)
        keys.append(MasterKey(id=key_id, key=SecretBytes(raw)))
    return keys


def _decode_base64url(text: str, where: str) -> bytes:
    # The stdlib decoder silently skips foreign characters unless validating,
    # and its validation accepts "+/" next to "-_"; check the alphabet first.
    if not _BASE64URL.fullmatch(text):
        raise ValueError(f"{where} is not base64url (A-Z a-z 0-9 - _ and = only)")
    body = text.rstrip("=")
    if len(body) % 4 == 1 or (text != body and len(text) % 4 != 0):
        raise ValueError(f"{where} is not valid base64url (bad length or padding)")
    try:
        return base64.b64decode(
            body + "=" * (-len(body) % 4), altchars=b"-_", validate=True
        )
    except binascii.Error as exc:
        raise ValueError(f"{where} is not valid base64url") from exc


def new_data_key() -> SecretBytes:
    """Return a fresh random 256-bit key."""
    return SecretBytes(secrets.token_bytes(KEY_SIZE))


def _aead(key: SecretBytes) -> AESGCM:
    raw = key.reveal()
    if len(raw) != KEY_SIZE:
        # AESGCM would also take 128/192-bit keys; the formats promise 256.
        raise ValueError(f"keys must be {KEY_SIZE} bytes (AES-256)")
    return AESGCM(raw)


def wrap_key(master: MasterKey, key: SecretBytes, *, aad: bytes) -> bytes:
    """Seal a data key under a master key: ``nonce(12) || ciphertext+tag``.

    `aad` must bind the key to its place (tenant, purpose, version), and the
    same bytes must be passed to `unwrap_key`.
    """
    if len(key) != KEY_SIZE:
        raise ValueError(f"data keys must be {KEY_SIZE} bytes")
    nonce = secrets.token_bytes(NONCE_SIZE)
    return nonce + _aead(master.key).encrypt(nonce, key.reveal(), aad)


def unwrap_key(master: MasterKey, wrapped: bytes, *, aad: bytes) -> SecretBytes:
    """Open a key sealed by `wrap_key`; `DecryptionError` on any mismatch."""
    if len(wrapped) != NONCE_SIZE + KEY_SIZE + TAG_SIZE:
        raise DecryptionError("wrapped key has the wrong length")
    aead = _aead(master.key)
    try:
        raw = aead.decrypt(wrapped[:NONCE_SIZE], wrapped[NONCE_SIZE:], aad)
    except InvalidTag:
        raise DecryptionError("wrapped key failed authentication") from None
    return SecretBytes(raw)


def encrypt_field(
    key: SecretBytes, version: int, plaintext: bytes, *, aad: bytes
) -> bytes:
    """Seal one column value under data key `version`.

    `aad` is ``tenant_id|table|column|pk`` so a value copied to another row,
    column or tenant fails to decrypt. Random 96-bit nonces stay within the
    NIST SP 800-38D bound up to 2**32 values per key version; rotate before.
    """
    if not 0 <= version < 2**32:
        raise ValueError("key version must fit in 4 unsigned bytes")
    header = _FIELD_HEADER.pack(FIELD_FORMAT, version)
    nonce = secrets.token_bytes(NONCE_SIZE)
    sealed = _aead(key).encrypt(nonce, plaintext, header + aad)
    return header + nonce + sealed


def field_version(blob: bytes) -> int:
    """Return the key version a field was sealed with (unauthenticated).

    Raises `DecryptionError` if the blob is too short or of unknown format.
    The version only selects a key; `decrypt_field` authenticates it.
    """
    if len(blob) < _FIELD_MIN_SIZE:
        raise DecryptionError("encrypted field is too short")
    fmt, version = _FIELD_HEADER.unpack_from(blob)
    if fmt != FIELD_FORMAT:
        raise DecryptionError(f"unknown encrypted field format {fmt}")
    return int(version)


def decrypt_field(key: SecretBytes, blob: bytes, *, aad: bytes) -> bytes:
    """Open a field sealed by `encrypt_field`; `DecryptionError` on mismatch."""
    field_version(blob)
    header_end = _FIELD_HEADER.size
    nonce_end = header_end + NONCE_SIZE
    try:
        return _aead(key).decrypt(
            blob[header_end:nonce_end], blob[nonce_end:], blob[:header_end] + aad
        )
    except InvalidTag:
        raise DecryptionError("encrypted field failed authentication") from None


def _chunk_count(size: int, chunk_size: int) -> int:
    # An empty file still has one (empty, last) chunk, so that dropping
    # every chunk is detectable.
    return max(1, -(-size // chunk_size))


class _FileHeader(typing.NamedTuple):
    raw: bytes
    chunk_size: int
    size: int
    prefix: bytes

    @property
    def sized(self) -> bool:
        return self.size != UNKNOWN_SIZE

    @property
    def chunk_count(self) -> int:
        """Number of chunks; only meaningful for a sized (or measured) header."""
        return _chunk_count(self.size, self.chunk_size)

    def chunk_length(self, index: int) -> int:
        """Plaintext length of chunk `index`."""
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def is_last(self, index: int) -> bool:
        return index == self.chunk_count - 1

    def nonce(self, index: int, last: bool) -> bytes:
        return self.prefix + struct.pack(">IB", index, last)


def _file_aad(header: _FileHeader, file_id: str) -> bytes:
    if not file_id:
        raise ValueError("file_id must not be empty; it binds chunks to a file")
    # The header is fixed-size, so the concatenation is unambiguous.
    return header.raw + file_id.encode()


def _read_exact(src: typing.BinaryIO, size: int) -> bytes:
    """Read `size` bytes, fewer only at end of stream."""
    data = src.read(size)
    if len(data) == size or not data:
        return data
    # Raw and socket-like streams may return short reads before EOF.
    parts = [data]
    missing = size - len(data)
    while missing:
        more = src.read(missing)
        if not more:
            break
        parts.append(more)
        missing -= len(more)
    return b"".join(parts)


def _read_header(src: typing.BinaryIO) -> _FileHeader:
    raw = _read_exact(src, FILE_HEADER_SIZE)
    if len(raw) != FILE_HEADER_SIZE:
        raise DecryptionError("encrypted file is truncated (no header)")
    magic, fmt, chunk_size, size, prefix = _FILE_HEADER.unpack(raw)
    if magic != FILE_MAGIC:
        raise DecryptionError("not an encrypted portal file")
    if fmt != FILE_FORMAT:
        raise DecryptionError(f"unknown encrypted file format {fmt}")
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise DecryptionError("encrypted file header has a bad chunk size")
    header = _FileHeader(raw, chunk_size, size, prefix)
    if header.sized and header.chunk_count > _MAX_CHUNKS:
        raise DecryptionError("encrypted file header has a bad size")
    return header


def _measure(header: _FileHeader, src: typing.BinaryIO) -> _FileHeader:
    """Return `header` with an unrecorded size worked out from the file length.

    `src` must be positioned right after the header and is left there. Every
    chunk but the last is sealed at exactly ``chunk size + tag`` bytes and
    only an empty file has an empty last chunk, so the length determines the
    size. The result is only as trustworthy as the length: it is confirmed
    when the last chunk, sealed with the last flag at that index, verifies.
    ``raw`` is kept, so the associated data still covers the real header.
    """
    if header.sized:
        return header
    if not src.seekable():
        raise ValueError(
            "size not recorded in the header (written with UNKNOWN_SIZE) and "
            "the source cannot seek to measure it"
        )
    body_start = src.tell()
    body = src.seek(0, 2) - body_start
    src.seek(body_start)
    sealed_size = header.chunk_size + TAG_SIZE
    count = _chunk_count(body, sealed_size)
    tail = body - (count - 1) * sealed_size
    if tail < TAG_SIZE or (tail == TAG_SIZE and count > 1):
        raise DecryptionError("encrypted file is truncated (length fits no chunks)")
    if count > _MAX_CHUNKS:
        raise DecryptionError("encrypted file has too many chunks")
    return header._replace(size=(count - 1) * header.chunk_size + tail - TAG_SIZE)


def _open_chunk(
    aead: AESGCM, header: _FileHeader, aad: bytes, index: int, sealed: bytes
) -> bytes:
    if len(sealed) != header.chunk_length(index) + TAG_SIZE:
        raise DecryptionError(f"encrypted file is truncated at chunk {index}")
    try:
        return aead.decrypt(header.nonce(index, header.is_last(index)), sealed, aad)
    except InvalidTag:
        raise DecryptionError(
            f"encrypted file chunk {index} failed authentication"
        ) from None


def _open_unsized_chunk(
    aead: AESGCM,
    header: _FileHeader,
    aad: bytes,
    index: int,
    sealed: bytes,
    *,
    last: bool,
) -> bytes:
    try:
        return aead.decrypt(header.nonce(index, last), sealed, aad)
    except InvalidTag:
        pass
    # A full-size chunk is judged last or not by where the stream ends. If it
    # verifies with the other flag it is authentic but the stream was cut or
    # extended at a chunk boundary; saying so beats a bare failure. The
    # plaintext of that trial is dropped, never returned.
    if len(sealed) == header.chunk_size + TAG_SIZE:
        try:
            aead.decrypt(header.nonce(index, not last), sealed, aad)
        except InvalidTag:
            pass
        else:
            if last:
                raise DecryptionError(
                    "encrypted file is truncated (ends before its last chunk)"
                )
            raise DecryptionError("encrypted file has trailing data")
    raise DecryptionError(f"encrypted file chunk {index} failed authentication")


def _unsized_chunks(
    aead: AESGCM, header: _FileHeader, aad: bytes, src: typing.BinaryIO
) -> Iterator[bytes]:
    sealed_size = header.chunk_size + TAG_SIZE
    sealed = _read_exact(src, sealed_size)
    index = 0
    while True:
        # An empty last chunk after full ones is never written (the writer
        # looks ahead), so it can only be a cut inside the final chunk.
        if len(sealed) < TAG_SIZE or (len(sealed) == TAG_SIZE and index > 0):
            raise DecryptionError(f"encrypted file is truncated at chunk {index}")
        # A short read already hit the end. A full chunk is the last one only
        # if nothing follows it; one byte of lookahead tells without
        # buffering the next chunk.
        peek = src.read(1) if len(sealed) == sealed_size else b""
        last = not peek
        yield _open_unsized_chunk(aead, header, aad, index, sealed, last=last)
        if last:
            return
        index += 1
        if index >= _MAX_CHUNKS:
            raise DecryptionError("encrypted file has too many chunks")
        sealed = peek + _read_exact(src, sealed_size - 1)


def _stream_size(src: typing.BinaryIO) -> int:
    if not src.seekable():
        raise ValueError(
            "pass size= for a source that cannot seek "
            "(size=UNKNOWN_SIZE if it cannot be known in advance)"
        )
    start = src.tell()
    end = src.seek(0, 2)
    src.seek(start)
    return end - start


def encrypt_stream(
    file_key: SecretBytes,
    src: typing.BinaryIO,
    dst: typing.BinaryIO,
    *,
    file_id: str,
    chunk_size: int = CHUNK_SIZE,
    size: int | None = None,
) -> int:
    """Encrypt `src` (from its position to its end) into `dst`; return size.

    The header records the plaintext size: it is measured by seeking `src`,
    or given as `size` for streams that cannot seek. Memory use is about two
    chunks (three with `UNKNOWN_SIZE`) whatever the file size, and only
    ciphertext is written.
    `file_key` must be fresh for this file, `file_id` must be the id the
    file will be read back with. If `src` turns out longer or shorter than
    the size, `ValueError` is raised and `dst` holds garbage to discard.

    ``size=UNKNOWN_SIZE`` is for sources whose length is unknown until they
    end (an export generated from a database cursor): the header records
    `UNKNOWN_SIZE`, `src` is read to its end, and the real size is returned.
    One chunk of lookahead flags the real last chunk, so chunks and nonces
    are those of a sized file and an empty source still gives one empty last
    chunk. It is opt-in, not the fallback for unseekable sources, because
    the header then gives no Content-Length (see `plaintext_size`).
    """
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}")
    if size is None:
        size = _stream_size(src)
    if size < 0:
        raise ValueError("size must not be negative")
    sized = size != UNKNOWN_SIZE
    if sized and _chunk_count(size, chunk_size) > _MAX_CHUNKS:
        raise ValueError("file has too many chunks; use a larger chunk_size")
    raw = _FILE_HEADER.pack(
        FILE_MAGIC, FILE_FORMAT, chunk_size, size, secrets.token_bytes(_PREFIX_SIZE)
    )
    header = _FileHeader(raw, chunk_size, size, raw[-_PREFIX_SIZE:])
    aad = _file_aad(header, file_id)
    aead = _aead(file_key)
    dst.write(raw)
    if not sized:
        return _encrypt_unsized(aead, header, aad, src, dst)
    for index in range(header.chunk_count):
        length = header.chunk_length(index)
        chunk = _read_exact(src, length)
        if len(chunk) != length:
            raise ValueError("source ended before its stated size")
        dst.write(aead.encrypt(header.nonce(index, header.is_last(index)), chunk, aad))
    if src.read(1):
        raise ValueError("source is longer than its stated size")
    return size


def _encrypt_unsized(
    aead: AESGCM,
    header: _FileHeader,
    aad: bytes,
    src: typing.BinaryIO,
    dst: typing.BinaryIO,
) -> int:
    chunk_size = header.chunk_size
    pending = _read_exact(src, chunk_size)
    total = 0
    index = 0
    while True:
        # A short chunk means the source ended. A full one is the last only
        # if nothing follows, which only reading ahead can tell; flagging an
        # extra empty chunk instead would make the layout differ from a
        # sized file's and leave the length ambiguous for `_measure`.
        ahead = _read_exact(src, chunk_size) if len(pending) == chunk_size else b""
        last = not ahead
        dst.write(aead.encrypt(header.nonce(index, last), pending, aad))
        total += len(pending)
        if last:
            return total
        index += 1
        if index >= _MAX_CHUNKS:
            raise ValueError("source has too many chunks; use a larger chunk_size")
        pending = ahead


def decrypt_stream(
    file_key: SecretBytes, src: typing.BinaryIO, *, file_id: str
) -> Iterator[bytes]:
    """Yield the plaintext of an encrypted file chunk by chunk.

    The header is read (and malformed headers rejected) at call time; chunks
    are read as the iterator advances. Each chunk is authenticated before it
    is yielded, and the last one only once the stream is known to end right
    after it. A `DecryptionError` mid-way means the file is truncated or
    tampered: what was yielded is authentic, but the whole must be treated
    as failed (e.g. abort the HTTP response). An empty file yields b"" once.

    Files written with ``size=UNKNOWN_SIZE`` are read until the chunk sealed
    as last, which must end the stream; `src` need not seek for them either.
    """
    header = _read_header(src)
    aad = _file_aad(header, file_id)
    aead = _aead(file_key)
    if not header.sized:
        return _unsized_chunks(aead, header, aad, src)

    def chunks() -> Iterator[bytes]:
        last = header.chunk_count - 1
        for index in range(header.chunk_count):
            sealed = _read_exact(src, header.chunk_length(index) + TAG_SIZE)
            plaintext = _open_chunk(aead, header, aad, index, sealed)
            if index == last and src.read(1):
                raise DecryptionError("encrypted file has trailing data")
            yield plaintext

    return chunks()


def decrypt_range(
    file_key: SecretBytes,
    src: typing.BinaryIO,
    start: int,
    end: int,
    *,
    file_id: str,
) -> Iterator[bytes]:
    """Yield plaintext bytes ``[start, end)`` reading only the chunks needed.

    `src` must seek; the ciphertext starts at its position at call time.
    Bounds are checked at call time against the header's size and must
    satisfy ``0 <= start <= end <= size`` (`ValueError` otherwise); the
    header itself is authenticated by the first chunk read. An empty range
    yields nothing. Every chunk is authenticated before any of it is
    yielded; a range that ends in the last chunk also rejects trailing data.

    For a file written with ``size=UNKNOWN_SIZE`` the size is worked out
    from the file length (see `plaintext_size`); it is authenticated only
    when the range reaches the last chunk, but every chunk read still is.
    """
    base = src.tell()
    header = _measure(_read_header(src), src)
    if not 0 <= start <= end <= header.size:
        raise ValueError(
            f"range [{start}, {end}) is outside the file (size {header.size})"
        )
    aad = _file_aad(header, file_id)
    aead = _aead(file_key)

    def chunks() -> Iterator[bytes]:
        if start == end:
            return
        sealed_size = header.chunk_size + TAG_SIZE
        first = start // header.chunk_size
        final = (end - 1) // header.chunk_size
        for index in range(first, final + 1):
            src.seek(base + FILE_HEADER_SIZE + index * sealed_size)
            sealed = _read_exact(src, header.chunk_length(index) + TAG_SIZE)
            plaintext = _open_chunk(aead, header, aad, index, sealed)
            if index == header.chunk_count - 1 and src.read(1):
                raise DecryptionError("encrypted file has trailing data")
            offset = index * header.chunk_size
            lo = max(start - offset, 0)
            hi = min(end - offset, len(plaintext))
            yield plaintext if (lo, hi) == (0, len(plaintext)) else plaintext[lo:hi]

    return chunks()


def plaintext_size(src: typing.BinaryIO) -> int:
    """Return the plaintext size recorded in an encrypted file's header.

    Reads the header at the current position and seeks back when `src` can
    seek. The value is not authenticated until a chunk is decrypted, so use
    it for planning (Content-Length, range checks), not as proof.
    `DecryptionError` if the header is malformed.

    A file written with ``size=UNKNOWN_SIZE`` has no size in its header: it
    is worked out from the length of the ciphertext, which must run from the
    header to the end of `src` (`DecryptionError` if no chunk layout fits).
    `ValueError` ("size not recorded ...") if `src` cannot seek.
    """
    position = src.tell() if src.seekable() else None
    try:
        return _measure(_read_header(src), src).size
    finally:
        if position is not None:
            src.seek(position)
