# crlm-edge's RAUC system configuration and keyring (the CA that signs the project's bundles).
FILESEXTRAPATHS:prepend:crlm-edge := "${THISDIR}/files:"
RAUC_KEYRING_FILE:crlm-edge = "crlm-ca.cert.pem"
