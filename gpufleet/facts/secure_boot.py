"""
Whether the host booted with UEFI Secure Boot on: the kernel then loads only signed modules, and
a DKMS-built NVIDIA module without a key the firmware trusts never loads.
"""

from __future__ import annotations

from enum import Enum

from pyinfra.api import FactBase

# The EFI global variable GUID (UEFI specification, 3.3 "Globally Defined Variables"); the
# variable's file is 4 bytes of attributes and then its one-byte value.
SECURE_BOOT_EFIVAR = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"


class SecureBootState(str, Enum):
    ENABLED = "enabled"
    DISABLED = "disabled"
    UNSUPPORTED = "not supported (no UEFI)"
    UNKNOWN = "unknown"


# mokutil --sb-state's words (mokutil's src/mokutil.c) and the efivar fallback's.
_STATES = {
    "SecureBoot enabled": SecureBootState.ENABLED,
    "SecureBoot disabled": SecureBootState.DISABLED,
    "EFI variables are not supported on this system": SecureBootState.UNSUPPORTED,
    "This system doesn't support Secure Boot": SecureBootState.UNSUPPORTED,
    "efivar 1": SecureBootState.ENABLED,
    "efivar 0": SecureBootState.DISABLED,
    "efivar absent": SecureBootState.DISABLED,
    "no efi": SecureBootState.UNSUPPORTED,
}


def parse_secure_boot(output: list[str]) -> SecureBootState:
    for line in output:
        state = _STATES.get(" ".join(line.split()))
        if state is not None:
            return state
    return SecureBootState.UNKNOWN


class SecureBoot(FactBase[SecureBootState]):
    """
    Returns the host's Secure Boot state, from ``mokutil --sb-state`` where mokutil is
    installed, else from the SecureBoot EFI variable.
    """

    @staticmethod
    def default() -> SecureBootState:
        return SecureBootState.UNKNOWN

    def command(self) -> str:
        return (
            "if command -v mokutil >/dev/null 2>&1; then mokutil --sb-state 2>&1; "
            "elif [ ! -d /sys/firmware/efi ]; then echo 'no efi'; "
            f"elif [ -r {SECURE_BOOT_EFIVAR} ]; "
            f'then echo "efivar $(od -An -t u1 -j4 -N1 {SECURE_BOOT_EFIVAR})"; '
            "else echo 'efivar absent'; fi; true"
        )

    def process(self, output: list[str]) -> SecureBootState:
        return parse_secure_boot(output)
