"""The SFTP drop box: keys, host key, sign-in decisions, limits, uploads.

EDI-C3. The paramiko classes in `edi/sftpd.py` are the interface: they
parse the protocol and call the functions here, which hold every rule.

- `keys`: the public keys a tenant registers (`edi.SftpKey`), and
  `tenants.SftpAccount` (public), which maps the username, the tenant's
  slug, to the tenant while it has at least one key;
- `hostkey`: the server's persistent host key;
- `logins`: sign-in decisions, bans, blocks and session limits;
- `uploads`: the virtual root and the upload on close.
"""

from __future__ import annotations

from edi.services.sftp.hostkey import (
    HostKey,
    sftp_host_key_default_path,
    sftp_host_key_ensure,
    sftp_host_key_fingerprints,
)
from edi.services.sftp.keys import (
    ALLOWED_KEY_TYPES,
    KEY_HELP,
    MAX_KEY_TEXT,
    MIN_RSA_BITS,
    ParsedKey,
    SftpKeyError,
    sftp_key_fingerprint,
    sftp_key_parse,
    sftp_key_register,
    sftp_key_remove,
)
from edi.services.sftp.logins import (
    AUTH_EVENT_RETENTION,
    DEFAULT_LIMITS,
    SessionLimitReached,
    SessionSlots,
    SftpLimits,
    SftpLogin,
    sftp_auth_events_prune,
    sftp_ip_banned_until,
    sftp_login_check_key,
    sftp_login_failed,
    sftp_login_succeeded,
    sftp_session_open,
    sftp_username_blocked_until,
)
from edi.services.sftp.uploads import (
    PathOutsideRoot,
    sftp_path_denied,
    sftp_path_resolve,
    sftp_upload_mode,
    sftp_upload_name_allowed,
    sftp_upload_receive,
    sftp_upload_refused,
    sftp_virtual_path,
)

__all__ = [
    "ALLOWED_KEY_TYPES",
    "AUTH_EVENT_RETENTION",
    "DEFAULT_LIMITS",
    "HostKey",
    "KEY_HELP",
    "MAX_KEY_TEXT",
    "MIN_RSA_BITS",
    "ParsedKey",
    "PathOutsideRoot",
    "SessionLimitReached",
    "SessionSlots",
    "SftpKeyError",
    "SftpLimits",
    "SftpLogin",
    "sftp_auth_events_prune",
    "sftp_host_key_default_path",
    "sftp_host_key_ensure",
    "sftp_host_key_fingerprints",
    "sftp_ip_banned_until",
    "sftp_key_fingerprint",
    "sftp_key_parse",
    "sftp_key_register",
    "sftp_key_remove",
    "sftp_login_check_key",
    "sftp_login_failed",
    "sftp_login_succeeded",
    "sftp_path_denied",
    "sftp_path_resolve",
    "sftp_session_open",
    "sftp_upload_mode",
    "sftp_upload_name_allowed",
    "sftp_upload_receive",
    "sftp_upload_refused",
    "sftp_username_blocked_until",
    "sftp_virtual_path",
]
