SUMMARY = "crlm-edge: the box's image for a Jetson Orin (read-only root, RAUC A/B)"
DESCRIPTION = "The crlm service with ONNX Runtime (TensorRT and CUDA providers), chrony, the \
               NFS/SMB clients for the lab's share, RAUC, and the state and model partitions made on first boot."
SECTION = "base"
LICENSE = "MIT"
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/MIT;md5=0835ade698e0bcf8506ecda2f7b4f302"

inherit core-image features_check

REQUIRED_DISTRO_FEATURES = "systemd usrmerge rauc"

# Read-only root: everything that changes lives on the state partition (/var/lib/crlm) or the
# model partition; no package manager, no login but the serial console's.
IMAGE_FEATURES += "read-only-rootfs"
IMAGE_FEATURES:remove = "debug-tweaks"

IMAGE_INSTALL += "\
    crlm \
    crlm-base \
    onnxruntime \
    tensorrt-core \
    tensorrt-plugins \
    chrony \
    chronyc \
    nfs-utils-client \
    cifs-utils \
    rauc \
    rauc-mark-good \
    e2fsprogs-mke2fs \
"

IMAGE_FSTYPES += "tegraflash tar.zst ext4"
IMAGE_ROOTFS_EXTRA_SPACE = "0"
