SUMMARY = "crlm-edge model update (RAUC bundle of the model package, signed)"
DESCRIPTION = "A bundle of its own for the model slot: installing it never touches the software, \
               and its install-check hook refuses a package that `crlm model verify` refuses, so the old \
               package stays."
SECTION = "base"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit bundle

SRC_URI += "file://crlm-model-hook"

RAUC_BUNDLE_COMPATIBLE = "crlm-edge-orin"
RAUC_BUNDLE_VERSION = "${CRLM_MODEL_VERSION}"
RAUC_BUNDLE_DESCRIPTION = "crlm-edge model package (never the software)"
RAUC_BUNDLE_FORMAT = "verity"
RAUC_BUNDLE_HOOKS[file] = "crlm-model-hook"
RAUC_BUNDLE_HOOKS[hooks] = "install-check"
RAUC_BUNDLE_SLOTS = "model"
# The package as `crlm model pack` writes it (a reproducible .tar): RAUC formats the slot and
# unpacks it there.
RAUC_SLOT_model = "crlm-model"
RAUC_SLOT_model[type] = "file"
RAUC_SLOT_model[file] = "crlm-model.tar"
RAUC_SLOT_model[rename] = "crlm-model.tar"
RAUC_SLOT_model[hooks] = "pre-install;post-install"

RAUC_KEY_FILE = "${CRLM_RAUC_KEY_FILE}"
RAUC_CERT_FILE = "${CRLM_RAUC_CERT_FILE}"
RAUC_KEYRING_FILE = "${CRLM_RAUC_KEYRING_FILE}"
