"""Signing keys and the signatures of checkpoints.

Signed checkpoints: a `checkpoint` entry carries an Ed25519 signature over the seq and hash of
the entry before it. The hash commits to every earlier entry, so one signature seals the whole
log up to that point; the engine writes one after the last entry of every run (`Signer`,
`AuditLog.checkpoint`). `VerifyKey` checks them (`check_log`); `generate_key_pair` makes the
pair (`retentiond audit keygen`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retentiond import safefiles
from retentiond.errors import AuditError
from retentiond.evidence.log.entries import canonical

if TYPE_CHECKING:
    # Imported where keys are used: cryptography's OpenSSL is about 10 MiB of resident memory
    # that a daemon without audit.signing_key never needs.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

# The systemd credential name (LoadCredential=signing-key:...) preferred over audit.signing_key.
CREDENTIAL_NAME = "signing-key"
_MAX_KEY_FILE = 64 * 1024


class SigningKeyError(AuditError):
    """The signing key cannot be used; a run that should be signed is failed instead."""


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw 32-byte public key, in hex: how entries and people name a key."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def signed_message(seq: int, hash: str, key_fingerprint: str) -> bytes:
    """The bytes a checkpoint's signature is over."""
    return canonical({"seq": seq, "hash": hash, "fingerprint": key_fingerprint})


class Signer:
    """An Ed25519 private key that signs checkpoints. Read it with `from_file`/`from_config`."""

    def __init__(self, key: Ed25519PrivateKey, source: Path | None = None) -> None:
        self._key = key
        self.source = source
        self.fingerprint = fingerprint(key.public_key())

    @classmethod
    def from_file(cls, path: Path) -> Signer:
        """Read a PEM (PKCS#8, unencrypted) Ed25519 private key.

        A key that users other than its owner may read or change is refused: never sign with a
        key others could have copied.
        """
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise SigningKeyError(
                f"the signing key {path} does not exist; create one with "
                "`retentiond audit keygen` or correct audit.signing_key"
            ) from None
        except OSError as exc:
            raise SigningKeyError(f"cannot read the signing key {path}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise SigningKeyError(f"the signing key {path} is not a regular file")
            mode = stat.S_IMODE(info.st_mode)
            if mode & 0o077:
                raise SigningKeyError(
                    f"the signing key {path} has mode {mode:04o}: users other than its owner may "
                    "read or change it, so it is not used and nothing is signed or deleted. "
                    f"Run `chmod 600 {path}` (or hand it to the service with LoadCredential=, "
                    "see docs/audit-log.md); if others could read it, treat it as exposed: "
                    "create a new key and give the DPO the new public key"
                )
            data = os.read(fd, _MAX_KEY_FILE + 1)
        except OSError as exc:
            raise SigningKeyError(f"cannot read the signing key {path}: {exc.strerror}") from None
        finally:
            os.close(fd)
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise SigningKeyError(
                f"the signing key {path} is not an unencrypted PEM private key; create one with "
                "`retentiond audit keygen`"
            ) from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SigningKeyError(
                f"the signing key {path} is not an Ed25519 key; create one with "
                "`retentiond audit keygen`"
            )
        return cls(key, path)

    @classmethod
    def from_config(cls, configured: Path) -> Signer:
        """The service's key: the systemd credential `signing-key` when the service has one
        ($CREDENTIALS_DIRECTORY, from LoadCredential=signing-key:<file>), else `configured`
        (audit.signing_key), read directly, e.g. by root running `run --once` from a shell."""
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials:
            candidate = Path(credentials) / CREDENTIAL_NAME
            if candidate.is_file():
                return cls.from_file(candidate)
        return cls.from_file(configured)

    def sign(self, seq: int, hash: str) -> dict[str, Any]:
        """The fields of a checkpoint entry that signs entry `seq` with hash `hash`."""
        signature = self._key.sign(signed_message(seq, hash, self.fingerprint))
        return {
            "signed_seq": seq,
            "signed_hash": hash,
            "key_fingerprint": self.fingerprint,
            "signature": base64.b64encode(signature).decode("ascii"),
        }

    def verify_key(self) -> VerifyKey:
        return VerifyKey(self._key.public_key(), self.fingerprint)


@dataclass(frozen=True)
class VerifyKey:
    """A public key that checks checkpoints (the one `retentiond audit keygen` gave the DPO)."""

    key: Ed25519PublicKey
    fingerprint: str

    @classmethod
    def from_pem(cls, data: bytes, source: str = "the public key") -> VerifyKey:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            key = serialization.load_pem_public_key(data)
        except (ValueError, UnsupportedAlgorithm):
            raise AuditError(
                f"{source} is not a PEM public key (the .pub file of `retentiond audit keygen`)"
            ) from None
        if not isinstance(key, Ed25519PublicKey):
            raise AuditError(f"{source} is not an Ed25519 public key")
        return cls(key, fingerprint(key))

    @classmethod
    def from_file(cls, path: Path) -> VerifyKey:
        try:
            with Path(path).open("rb") as file:
                data = file.read(_MAX_KEY_FILE + 1)
        except OSError as exc:
            raise AuditError(f"cannot read the public key {path}: {exc.strerror}") from None
        return cls.from_pem(data, f"{path}")

    def verify(self, seq: int, hash: str, signature: str) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            raw = base64.b64decode(signature.encode("ascii"), validate=True)
            self.key.verify(raw, signed_message(seq, hash, self.fingerprint))
        except (InvalidSignature, binascii.Error, UnicodeEncodeError, ValueError):
            return False
        return True

    def pem(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def generate_key_pair(out_dir: Path, name: str = "retentiond") -> tuple[Path, Path, str]:
    """Write `<name>.key` (private, PKCS#8 PEM, mode 0600) and `<name>.pub` (public, 0644) in
    `out_dir` (created 0700 if missing); return both paths and the fingerprint.

    Never overwrites: a key that signed checkpoints must stay, or its signatures cannot be
    checked against the public key the DPO holds.
    """
    if not name or "/" in name or name.startswith(".") or name != name.strip():
        raise SigningKeyError(f"key name {name!r}: use a plain file name such as 'retentiond'")
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise SigningKeyError(f"cannot create the folder {out_dir}: {exc.strerror}") from None
    private, public = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = VerifyKey(key.public_key(), "").pem()
    try:
        with safefiles.folder(out_dir) as folder:
            _write_new(folder, private, private_pem, 0o600)
            try:
                _write_new(folder, public, public_pem, 0o644)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(private.name, dir_fd=folder)
                raise
    except SigningKeyError:
        raise
    except OSError as exc:
        raise SigningKeyError(f"cannot use the folder {out_dir}: {exc.strerror}") from None
    return private, public, fingerprint(key.public_key())


def _write_new(folder: int, path: Path, data: bytes, mode: int) -> None:
    """The key file, whole, in the opened folder; never over an existing file or link."""
    try:
        safefiles.write_new(folder, path.name, data, mode)
    except FileExistsError:
        raise SigningKeyError(
            f"{path} already exists; keygen never overwrites a key (its checkpoints "
            "could no longer be checked): choose another --name or --out-dir"
        ) from None
    except OSError as exc:
        raise SigningKeyError(f"cannot write {path}: {exc.strerror}") from None
