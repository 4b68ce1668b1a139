SUMMARY = "crlm-edge: CRLM risk prediction for the validation study"
DESCRIPTION = "The crlm service (Rust): watches the lab's share, assembles cases, runs the \
               study's locked model through ONNX Runtime with the TensorRT provider, locks each \
               prediction in a signed, hash-chained ledger, drives the front panel and reports \
               to the study's MQTT broker."
SECTION = "science"
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"

# Built from the checkout this layer lives in (yocto/meta-crlm), so an image is always the
# commit it was built from. Every crate comes from crlm-crates.inc (yocto/update-crates writes it
# from Cargo.lock; CI fails when they differ): BitBake fetches them, cargo builds offline.
EXTERNALSRC = "${CRLM_TOPDIR}"

# Two C/C++ libraries build inside cargo with CMake, from the sources their crates bundle:
# libjpeg-turbo (turbojpeg-sys; slide JPEG tiles decode to OpenSlide's pixels, NEON on aarch64)
# and CharLS (charls-sys; JPEG-LS CT). The cmake crate takes the cross compiler from the
# environment cargo_bin sets up.
DEPENDS += "cmake-native"

require crlm-crates.inc

SRC_URI += "\
    file://cargo-config.toml \
    file://crlm.service \
    file://crlm.sysusers \
    file://crlm.tmpfiles \
    file://crlm.toml \
    file://srv-crlm-share.mount \
"

inherit cargo_bin externalsrc systemd useradd

# The device's features: ONNX Runtime and OpenSlide (both loaded at run time) and the SPI front
# panel; none of the study office's code (collector, statistics, demo). The image has no
# OpenSlide yet (no recipe in the scarthgap layers: docs/DEPLOY.md), so the box reads SVS, TIFF
# and DICOM slides natively and refuses other scanners' formats naming them.
CARGO_MANIFEST_PATH = "${S}/appliance/crlm/Cargo.toml"

CARGO_FEATURES = "onnx openslide spi"

EXTRA_CARGO_FLAGS = "--no-default-features --frozen --bin crlm"

# cargo reads the crates BitBake unpacked (crate:// sources land in ${WORKDIR}/cargo_home/bitbake)
# instead of crates.io: the build needs no network.
do_configure:append() {
    sed "s|@CRATES@|${WORKDIR}/cargo_home/bitbake|" ${WORKDIR}/cargo-config.toml > ${CARGO_HOME}/config.toml
}

do_install:append() {
    install -d ${D}${systemd_system_unitdir} ${D}${sysconfdir}/crlm ${D}${nonarch_libdir}/tmpfiles.d \
        ${D}${nonarch_libdir}/sysusers.d
    install -m 0644 ${WORKDIR}/crlm.service ${D}${systemd_system_unitdir}/crlm.service
    install -m 0644 ${WORKDIR}/srv-crlm-share.mount ${D}${systemd_system_unitdir}/srv-crlm-share.mount
    install -m 0644 ${WORKDIR}/crlm.sysusers ${D}${nonarch_libdir}/sysusers.d/crlm.conf
    install -m 0644 ${WORKDIR}/crlm.tmpfiles ${D}${nonarch_libdir}/tmpfiles.d/crlm.conf
    install -m 0640 -g crlm ${WORKDIR}/crlm.toml ${D}${sysconfdir}/crlm/crlm.toml
    install -d ${D}${datadir}/crlm/model
}

# The crlm user and its groups, made when the root file system is built (it is read-only on the
# box). crlm.sysusers says the same and is installed too: poky's systemd_sysusers_check compares
# the two when the image is made and warns where they differ.
USERADD_PACKAGES = "${PN}"
GROUPADD_PARAM:${PN} = "--system spi; --system gpio"
USERADD_PARAM:${PN} = "--system --home-dir ${localstatedir}/lib/crlm --no-create-home \
                       --shell /sbin/nologin --comment 'crlm-edge service' --user-group --groups video,spi,gpio crlm"

SYSTEMD_SERVICE:${PN} = "crlm.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"
# srv-crlm-share.mount is installed but not enabled: the share's address is the site's
# (DEPLOY.md: a drop-in with What=, then `systemctl enable srv-crlm-share.mount`).

FILES:${PN} += "\
    ${nonarch_libdir}/sysusers.d/crlm.conf \
    ${nonarch_libdir}/tmpfiles.d/crlm.conf \
    ${systemd_system_unitdir}/crlm.service \
    ${systemd_system_unitdir}/srv-crlm-share.mount \
"
CONFFILES:${PN} = "${sysconfdir}/crlm/crlm.toml"

# The inference runtime the service loads, chrony for lock times that are evidence, and the
# share's clients.
RDEPENDS:${PN} += "\
    chrony \
    cifs-utils \
    nfs-utils-client \
    onnxruntime \
"
