"""Reading an `--esp-keys` file: manual IPsec keys, refused unless only their owner can read them.

The file is TOML (core.esp.keys_from_table says what it holds). A key is a
secret that outlives the process: it is read from a file the operator
protects, never from the command line (where `ps` and shell history would
show it), and this module refuses a file that anyone but its owner may read
or write, as ssh refuses a private key with loose permissions. The key's
value never appears in an error: at most its length.
"""

from __future__ import annotations

import os
import stat
import tomllib

from ..core.errors import ConfigError
from ..core.esp import EspKeys, keys_from_table


def read_esp_keys(path: str, what: str = "--esp-keys") -> EspKeys:
    """The security associations of `path`, or ConfigError (one line per mistake, no key material); `what`
    names where the path was given (the option, or the configuration file's key)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{what} {path} is not a regular file")
        loose = stat.S_IMODE(info.st_mode) & 0o077
        if loose:
            raise ConfigError(
                f"{what} {path} is readable or writable by others (mode {stat.S_IMODE(info.st_mode):04o}): "
                f"keys must be private to their owner; chmod 600 {path}"
            )
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read()
    finally:
        os.close(fd)
    try:
        table = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        # The parser's message names a line and column, never the value found there.
        reason = str(exc) if isinstance(exc, tomllib.TOMLDecodeError) else "not UTF-8 text"
        raise ConfigError(f"{what} {path}: not valid TOML ({reason})") from None
    return keys_from_table(table, source=f"{what} {path}")
