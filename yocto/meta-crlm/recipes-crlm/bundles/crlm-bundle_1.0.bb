SUMMARY = "crlm-edge software update (RAUC bundle of crlm-image, signed)"
DESCRIPTION = "crlm-image for the inactive rootfs slot (L4T rootfs A/B). It never carries \
               the model package, which has its own slot and bundle (crlm-model-bundle)."
SECTION = "base"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit bundle

RAUC_BUNDLE_COMPATIBLE = "crlm-edge-orin"
RAUC_BUNDLE_VERSION = "${DISTRO_VERSION}"
RAUC_BUNDLE_DESCRIPTION = "crlm-edge software (never the model)"
RAUC_BUNDLE_FORMAT = "verity"
RAUC_BUNDLE_SLOTS = "rootfs"
RAUC_SLOT_rootfs = "crlm-image"
RAUC_SLOT_rootfs[fstype] = "ext4"

RAUC_KEY_FILE = "${CRLM_RAUC_KEY_FILE}"
RAUC_CERT_FILE = "${CRLM_RAUC_CERT_FILE}"
RAUC_KEYRING_FILE = "${CRLM_RAUC_KEYRING_FILE}"
