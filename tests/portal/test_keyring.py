"""The per-tenant keyring service (PORTAL-19..21) on real PostgreSQL.

Fields and files are sealed with tenant data keys that live in the tenant
schema only wrapped by the master key; another tenant's keys cannot open
them; rotation keeps old data readable; destruction shreds; master-key
rotation re-wraps without touching data; no key bytes reach the logs.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import pickle
import secrets
from collections.abc import Iterator

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django_tenants.utils import tenant_context

from portal.crypto import DecryptionError, KeyDestroyed, SecretBytes, field_version
from portal.db import use_public_schema
from portal.errors import TenantContextError
from portal.models import AuditEvent, DataKey, DataKeyState
from portal.services.keyring import (
    field_aad,
    keyring_active_key,
    keyring_canary_ok,
    keyring_decrypt,
    keyring_destroy,
    keyring_encrypt,
    keyring_file_open,
    keyring_file_store,
    keyring_forget,
    keyring_key,
    keyring_rewrap,
    keyring_rotate,
    master_keys,
)

MIB = 1024 * 1024
PLAINTEXT = b"client-secret-PLAINTEXT-marker-0123456789"


@pytest.fixture(autouse=True)
def _fresh_key_cache() -> Iterator[None]:
    # Each test rolls its keys back; drop unwrapped copies so none outlive it.
    keyring_forget()
    yield
    keyring_forget()


def _aad(pk: object = 1) -> bytes:
    return field_aad(table="crm_connection", column="client_secret", pk=pk)


def _new_master_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def _windows(data: bytes, size: int = 8) -> set[bytes]:
    return {data[i : i + size] for i in range(0, len(data) - size + 1)}


def test_encrypted_field_holds_none_of_the_plaintext(tenant):
    with tenant_context(tenant):
        blob = keyring_encrypt(purpose="secrets", plaintext=PLAINTEXT, aad=_aad())
        assert not any(window in blob for window in _windows(PLAINTEXT))
        assert keyring_decrypt(purpose="secrets", blob=blob, aad=_aad()) == PLAINTEXT
        # The associated data binds the value to its row.
        with pytest.raises(DecryptionError):
            keyring_decrypt(purpose="secrets", blob=blob, aad=_aad(pk=2))


def test_data_key_is_stored_only_wrapped(tenant):
    with tenant_context(tenant):
        version, key = keyring_active_key(purpose="secrets")
        row = DataKey.objects.get(purpose="secrets", version=version)
    raw = key.reveal()
    assert len(raw) == 32
    wrapped = bytes(row.wrapped or b"")
    assert raw not in wrapped
    assert not any(window in wrapped for window in _windows(raw))
    assert raw not in bytes(row.canary)
    assert row.master_key_id == master_keys()[0].id
    assert row.fingerprint == key.fingerprint
    assert row.fingerprint not in raw.hex()


def test_another_tenants_key_cannot_decrypt(tenant, other_tenant):
    with tenant_context(tenant):
        blob = keyring_encrypt(purpose="secrets", plaintext=PLAINTEXT, aad=_aad())
    with tenant_context(other_tenant):
        # Give the other tenant a key of the same version, so decryption is tried.
        keyring_active_key(purpose="secrets")
        with pytest.raises((DecryptionError, KeyDestroyed)):
            keyring_decrypt(purpose="secrets", blob=blob, aad=_aad())


def test_another_tenant_cannot_open_a_file(tenant, other_tenant, tmp_path):
    path = tmp_path / "doc.enc"
    with tenant_context(tenant):
        keyring_file_store(
            purpose="edi", file_id="f-1", src=io.BytesIO(PLAINTEXT), path=path
        )
    with tenant_context(other_tenant):
        keyring_active_key(purpose="edi")
        with pytest.raises((DecryptionError, KeyDestroyed)):
            b"".join(keyring_file_open(purpose="edi", file_id="f-1", path=path))


def test_rotation_keeps_old_data_readable_and_seals_new_data_with_the_new_key(tenant):
    with tenant_context(tenant):
        old_version, _ = keyring_active_key(purpose="secrets")
        old_blob = keyring_encrypt(purpose="secrets", plaintext=b"old", aad=_aad())
        row = keyring_rotate(purpose="secrets")
        assert row.version == old_version + 1
        assert row.state == DataKeyState.ACTIVE
        assert (
            DataKey.objects.get(purpose="secrets", version=old_version).state
            == DataKeyState.RETIRED
        )
        new_blob = keyring_encrypt(purpose="secrets", plaintext=b"new", aad=_aad())
        assert field_version(old_blob) == old_version
        assert field_version(new_blob) == row.version
        keyring_forget()
        assert keyring_decrypt(purpose="secrets", blob=old_blob, aad=_aad()) == b"old"
        assert keyring_decrypt(purpose="secrets", blob=new_blob, aad=_aad()) == b"new"
        assert AuditEvent.objects.filter(
            action="portal.keyring.rotated", target_id=str(row.pk)
        ).exists()


def test_destroy_shreds_data_and_fails_the_canary(tenant):
    with tenant_context(tenant):
        version, _ = keyring_active_key(purpose="pointdrive")
        blob = keyring_encrypt(purpose="pointdrive", plaintext=PLAINTEXT, aad=_aad())
        assert keyring_canary_ok(purpose="pointdrive", version=version)
        fingerprints = keyring_destroy(purpose="pointdrive")
        keyring_forget()
        row = DataKey.objects.get(purpose="pointdrive", version=version)
        assert row.fingerprint in fingerprints
        assert row.wrapped is None
        assert row.state == DataKeyState.DESTROYED
        assert row.destroyed_at is not None
        with pytest.raises(KeyDestroyed):
            keyring_decrypt(purpose="pointdrive", blob=blob, aad=_aad())
        with pytest.raises(KeyDestroyed):
            keyring_key(purpose="pointdrive", version=version)
        assert not keyring_canary_ok(purpose="pointdrive", version=version)
        # Other purposes are untouched.
        other_version, _ = keyring_active_key(purpose="secrets")
        assert keyring_canary_ok(purpose="secrets", version=other_version)
        assert AuditEvent.objects.filter(action="portal.keyring.destroyed").exists()


def test_file_round_trip_and_tamper_detection(tenant, tmp_path):
    data = os.urandom(3 * MIB + 1234)
    path = tmp_path / "big.enc"
    with tenant_context(tenant):
        size = keyring_file_store(
            purpose="edi", file_id="file-42", src=io.BytesIO(data), path=path
        )
        on_disk = path.read_bytes()
        assert size == len(data)
        assert len(on_disk) > len(data)
        assert data[:64] not in on_disk
        assert data[2 * MIB : 2 * MIB + 64] not in on_disk
        assert not path.with_name(path.name + ".part").exists()
        assert (
            b"".join(keyring_file_open(purpose="edi", file_id="file-42", path=path))
            == data
        )

        # The file id is bound in: a file moved to another id fails.
        with pytest.raises(DecryptionError):
            b"".join(keyring_file_open(purpose="edi", file_id="file-43", path=path))

        tampered = bytearray(on_disk)
        tampered[len(on_disk) // 2] ^= 0x01
        path.write_bytes(bytes(tampered))
        with pytest.raises(DecryptionError):
            b"".join(keyring_file_open(purpose="edi", file_id="file-42", path=path))

        path.write_bytes(on_disk[: len(on_disk) - MIB])
        with pytest.raises(DecryptionError):
            b"".join(keyring_file_open(purpose="edi", file_id="file-42", path=path))


def test_master_key_rotation_rewraps_and_old_master_can_go(tenant, settings):
    old = settings.PORTAL_MASTER_KEY.split(",")[0]
    new = _new_master_key()
    with tenant_context(tenant):
        blob = keyring_encrypt(purpose="secrets", plaintext=PLAINTEXT, aad=_aad())
        before = {
            row.pk: bytes(row.wrapped or b"")
            for row in DataKey.objects.exclude(state=DataKeyState.DESTROYED)
        }
        settings.PORTAL_MASTER_KEY = f"{new},{old}"
        new_id = master_keys()[0].id
        assert keyring_rewrap() == len(before)
        live = list(DataKey.objects.exclude(state=DataKeyState.DESTROYED))
        assert {row.master_key_id for row in live} == {new_id}
        assert all(bytes(row.wrapped or b"") != before[row.pk] for row in live)
        # Nothing left to move: re-running is a no-op.
        assert keyring_rewrap() == 0

        settings.PORTAL_MASTER_KEY = new
        keyring_forget()
        assert keyring_decrypt(purpose="secrets", blob=blob, aad=_aad()) == PLAINTEXT

        settings.PORTAL_MASTER_KEY = old
        keyring_forget()
        with pytest.raises(DecryptionError):
            keyring_decrypt(purpose="secrets", blob=blob, aad=_aad())


def _encodings(raw: bytes) -> list[str]:
    std = base64.b64encode(raw).decode()
    url = base64.urlsafe_b64encode(raw).decode()
    return [
        raw.hex(),
        raw.hex().upper(),
        std,
        std.rstrip("="),
        url,
        url.rstrip("="),
        repr(raw),
    ]


def test_logs_hold_no_key_bytes(tenant, settings, caplog, tmp_path):
    revealed: list[SecretBytes] = []
    new_master = _new_master_key()
    with (
        caplog.at_level(logging.DEBUG),
        caplog.at_level(logging.DEBUG, logger="django.db.backends"),
        tenant_context(tenant),
        # Log every SQL statement with its parameters too.
        CaptureQueriesContext(connection),
    ):
        revealed.extend(key.key for key in master_keys())
        revealed.append(keyring_active_key(purpose="secrets")[1])
        blob = keyring_encrypt(purpose="secrets", plaintext=PLAINTEXT, aad=_aad())
        keyring_rotate(purpose="secrets")
        revealed.append(keyring_active_key(purpose="secrets")[1])
        keyring_file_store(
            purpose="edi",
            file_id="log-1",
            src=io.BytesIO(PLAINTEXT),
            path=tmp_path / "f",
        )
        revealed.append(keyring_active_key(purpose="edi")[1])
        b"".join(keyring_file_open(purpose="edi", file_id="log-1", path=tmp_path / "f"))
        settings.PORTAL_MASTER_KEY = f"{new_master},{settings.PORTAL_MASTER_KEY}"
        revealed.extend(key.key for key in master_keys())
        keyring_rewrap()
        keyring_forget()
        keyring_decrypt(purpose="secrets", blob=blob, aad=_aad())
        keyring_destroy(purpose="secrets")
        logging.getLogger("portal.test").info("keys in use: %s", revealed)

    assert any(r.name == "django.db.backends" for r in caplog.records), (
        "SQL not captured"
    )
    logged = caplog.text + "\n".join(
        f"{record.getMessage()} {record.args!r}" for record in caplog.records
    )
    for key in revealed:
        for form in _encodings(key.reveal()):
            assert form not in logged
    # Keys log as their fingerprint only.
    assert revealed[0].fingerprint in logged


def test_keys_refuse_pickling(tenant):
    with tenant_context(tenant):
        _, key = keyring_active_key(purpose="exports")
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(TypeError):
        pickle.dumps(master_keys()[0])
    with pytest.raises(TypeError):
        pickle.dumps({"nested": [key]})


def test_keyring_refuses_the_public_schema(db):
    use_public_schema()
    with pytest.raises(TenantContextError):
        keyring_active_key(purpose="secrets")
